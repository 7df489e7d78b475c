"""Sequence classifiers (models/heads.py): the position they read, padding, the Net contract, FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge.models.heads import BERTClassifier, GPTClassifier, LlamaClassifier, last_token_index
from lmforge.protocols import Net

DIMS = {"vocab_size": 64, "max_seq_len": 32, "n_layer": 2, "n_head": 2, "d_model": 32}
NETS = {
    "bert": lambda: BERTClassifier(num_labels=3, d_ff=64, **DIMS),
    "gpt": lambda: GPTClassifier(num_labels=3, **DIMS),
    "llama": lambda: LlamaClassifier(num_labels=3, **DIMS),
}
PAD = 0


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


def test_last_token_index_is_the_last_real_token_on_either_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 3]


@pytest.mark.parametrize("family", sorted(NETS))
def test_padding_does_not_change_a_row_logits(family):
    """A short row padded to a long one's width gives the logits it gives alone: a decoder reads its last real token
    (taking the first pad would read a pad position, whose hidden state differs), BERT masks the padding keys."""
    torch.manual_seed(0)
    net = NETS[family]().eval()
    short, long = [5, 9, 3, 7], [4, 8, 2, 6, 11, 12, 13, 14, 15]
    ids, mask = padded([short, long])
    together = net(ids, mask)
    alone = net(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)
    # the first pad position holds a different state: reading it would have changed the logits
    wrong = torch.tensor([len(short)])
    if family != "bert":
        h = net.backbone.hidden_states(ids[:1])
        assert not torch.allclose(net.score(h[0, wrong]), alone[0:1], atol=1e-4)


@pytest.mark.parametrize("family", sorted(NETS))
def test_classifier_keeps_the_net_contract_without_the_lm_head(family):
    net = NETS[family]()
    assert isinstance(net, Net)
    assert not any("lm_head" in k or "head_fc" in k for k in net.state_dict())
    rebuilt = type(net)(**net.config_dict())
    assert rebuilt.num_labels == 3 and set(rebuilt.state_dict()) == set(net.state_dict())
    assert len(net.transformer_blocks()) == 2
    ids = torch.randint(1, 64, (2, 7))
    assert net(ids, torch.ones_like(ids)).shape == (2, 3)


def test_bert_classifier_flops_match_the_flop_counter():
    net = NETS["bert"]()
    ids = torch.randint(1, 64, (3, 12))
    with FlopCounterMode(display=False) as counter:
        net(ids, torch.ones_like(ids))
    assert net.forward_flops({"input_ids": ids}) == counter.get_total_flops()


def test_init_weights_redraws_the_head():
    net = NETS["gpt"]()
    with torch.no_grad():
        net.score.weight.fill_(3.0)
    net.init_weights()
    assert net.score.weight.abs().max() < 0.2


def test_a_classifier_needs_two_labels():
    with pytest.raises(ValueError, match="at least 2 labels"):
        GPTClassifier(num_labels=1, **DIMS)
