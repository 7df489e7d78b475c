"""The token loss every objective shares: cross-entropy over the positions that have a target."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # a label with no target (padding, unmasked MLM positions): as PyTorch's and HF's default


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the labels that are not IGNORE_INDEX, their number) for `logits` (..., vocab)
    and `labels` (...). The count stays a tensor on the logits' device: reading it as a Python int would wait
    for the device on every step. The loss is computed in fp32 whatever the logits' dtype."""
    n = (labels != IGNORE_INDEX).sum()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    if hasattr(loss, "to_local"):  # tensor parallel's loss-parallel step: the same (replicated) value on every rank
        loss = loss.to_local()
    return loss, n
