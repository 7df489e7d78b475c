"""objectives/losses.py: the one token cross-entropy the objectives share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.objectives.clm import next_token_loss
from lmforge.objectives.losses import IGNORE_INDEX, token_cross_entropy


def test_token_cross_entropy_averages_over_targets_and_counts_them_as_a_tensor():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.bfloat16)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :4] = IGNORE_INDEX
    loss, n = token_cross_entropy(logits, labels)
    kept = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits.float()[kept], labels[kept])
    assert torch.is_tensor(n) and n.item() == int(kept.sum()) == 17  # a tensor: no host sync per step
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected)


def test_next_token_loss_predicts_the_following_label():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, generator=g)
    labels = torch.randint(0, 9, (2, 5), generator=g)
    loss, n = next_token_loss(logits, labels)
    assert n.item() == 8
    assert torch.allclose(loss, F.cross_entropy(logits[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1)))
