"""Analytic FLOPs per batch (lmforge.flops) against torch's FlopCounterMode, for every model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmforge.flops import forward_flops, training_flops
from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.models.masks import decoder_inputs
from lmforge.models.t5 import T5, shift_right
from lmforge.objectives.clm import PackedCausalBatches
from lmforge.objectives.prefix_lm import PrefixBatches

VOCAB = 128


def counted(fn, backward: bool) -> int:
    # The math SDPA backend: on CPU the fused kernel is invisible to FlopCounterMode (it would count 0).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
        if backward:
            out.float().sum().backward()
    return counter.get_total_flops()


def gpt_case():
    net = GPT(vocab_size=VOCAB, max_seq_len=64, n_layer=2, n_head=4, d_model=64)
    ids = torch.randint(0, VOCAB, (3, 40))
    return net, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, lambda: net(ids)


def llama_case(**kw):
    net = Llama(vocab_size=VOCAB, max_seq_len=64, n_layer=2, n_head=4, d_model=64, d_ff=96, **kw)
    ids = torch.randint(0, VOCAB, (3, 40))
    return net, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, lambda: net(ids)


def bert_case():
    net = BERT(vocab_size=VOCAB, max_seq_len=64, n_layer=3, n_head=2, d_model=32, d_ff=96, dropout=0.0)
    ids = torch.randint(1, VOCAB, (4, 24))
    mask = torch.ones_like(ids)
    mask[0, 20:] = 0  # padding is computed all the same
    return net, {"input_ids": ids, "attention_mask": mask, "labels": ids}, lambda: net(ids, mask)


def bert_nsp_case():
    """BERT with the pooler and pair head: the forward training runs is `pretraining_logits`, both heads."""
    net = BERT(vocab_size=VOCAB, max_seq_len=64, n_layer=2, n_head=2, d_model=32, d_ff=96, dropout=0.0, pair_head=True)
    ids = torch.randint(1, VOCAB, (4, 24))
    types = (torch.arange(24) >= 10).long().expand(4, -1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types, "labels": ids}

    def fn():
        mlm, pair = net.pretraining_logits(ids, batch["attention_mask"], types)
        return mlm.sum() + pair.sum()

    return net, batch, fn


def t5_case(feed_forward: str, tie: bool, n_decoder_layer: int | None):
    net = T5(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=80,
        n_layer=2,
        n_decoder_layer=n_decoder_layer,
        n_head=3,
        feed_forward=feed_forward,
        tie_word_embeddings=tie,
        dropout=0.0,
    )
    ids = torch.randint(1, VOCAB, (2, 30))
    labels = torch.randint(1, VOCAB, (2, 11))  # encoder and decoder lengths differ: cross-attention is t x s
    dec = shift_right(labels, 0, 0)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "decoder_input_ids": dec}
    return net, batch, lambda: net(ids, batch["attention_mask"], dec)


CASES = {
    "gpt": gpt_case,
    # GQA's narrower k/v projections, SwiGLU's three matrices; RoPE and ALiBi add no matmul
    "llama-gqa-swiglu-rope": lambda: llama_case(n_kv_head=2),
    "llama-mqa-gelu-alibi": lambda: llama_case(n_kv_head=1, mlp="gelu", position="alibi", tie_word_embeddings=True),
    "llama-mha-learned": lambda: llama_case(n_kv_head=4, position="learned", norm="layernorm"),
    "bert": bert_case,
    "bert-nsp": bert_nsp_case,
    "t5-v1.0": lambda: t5_case("relu", True, None),
    "t5-v1.1-deeper-decoder": lambda: t5_case("gated-gelu", False, 3),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_analytic_flops_match_flop_counter(family):
    torch.manual_seed(0)
    net, batch, fn = CASES[family]()
    fwd, train = counted(fn, backward=False), counted(fn, backward=True)
    assert forward_flops(net, batch) == pytest.approx(fwd, rel=0.05)
    assert training_flops(net, batch) == pytest.approx(train, rel=0.05)


def test_t5_without_decoder_inputs_uses_the_labels_length():
    net, batch, _ = t5_case("relu", True, None)
    assert forward_flops(net, {k: v for k, v in batch.items() if k != "decoder_input_ids"}) == forward_flops(net, batch)


def test_flops_follow_the_batch_shape_and_survive_compile_wrapping():
    net, batch, _ = gpt_case()
    longer = {"input_ids": torch.zeros(3, 64, dtype=torch.long)}
    assert forward_flops(net, longer) > forward_flops(net, batch)

    class Wrapped(torch.nn.Module):  # how torch.compile's OptimizedModule holds the net
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert forward_flops(Wrapped(net), batch) == forward_flops(net, batch)


def test_bert_pair_head_flops_are_counted_exactly():
    """The pooler and classifier are a sliver of the total (2 of ~7000 rows of matmul): counted exactly, not lost in
    the 5% tolerance."""
    torch.manual_seed(0)
    net, batch, fn = bert_nsp_case()
    plain = BERT(**{**net.config_dict(), "pair_head": False})
    extra = 2 * 4 * 32 * 32 + 2 * 4 * 32 * 2  # pooler (d x d) and classifier (d x 2) over 4 [CLS] rows
    assert forward_flops(net, batch) - forward_flops(plain, batch) == extra
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as with_head:
        fn()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as without:
        plain(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert with_head.get_total_flops() - without.get_total_flops() == extra


def test_unknown_family_gives_none():
    assert training_flops(torch.nn.Linear(4, 4), {"input_ids": torch.zeros(2, 3)}) is None


@pytest.mark.parametrize("family", [f for f in sorted(CASES) if f.startswith("llama")])
def test_llama_forward_count_is_exact(family):
    """Exact, not within 5%: a k/v projection counted at full width under GQA would be a 2-6% error."""
    torch.manual_seed(0)
    net, batch, fn = CASES[family]()
    assert forward_flops(net, batch) == counted(fn, backward=False)


def masked_case(net_case, builder_kind: str):
    """A decoder on a batch with document masks (and a prefix): the same matmuls as the causal forward."""
    net, _, _ = net_case()
    blocks = list(np.random.default_rng(0).integers(0, VOCAB, (3, 40)))
    for row in blocks:
        row[[5, 17]] = 0  # eos: three documents per block
    builder = PackedCausalBatches(40, eos_id=0) if builder_kind == "documents" else PrefixBatches(40, eos_id=0)
    batch = builder.with_document_mask()(blocks, np.random.default_rng(0))
    return net, batch, lambda: net(batch["input_ids"], **decoder_inputs(batch))


MASKED = {
    "gpt-documents": lambda: masked_case(gpt_case, "documents"),
    "llama-documents": lambda: masked_case(lambda: llama_case(n_kv_head=2), "documents"),
    "llama-alibi-prefix-documents": lambda: masked_case(lambda: llama_case(n_kv_head=1, position="alibi"), "prefix"),
}


@pytest.mark.parametrize("case", sorted(MASKED))
def test_masks_change_no_matmul_count(case):
    """SDPA computes the full score matrix under any mask: document and prefix masks save no FLOPs and add none."""
    torch.manual_seed(0)
    net, batch, fn = MASKED[case]()
    assert forward_flops(net, batch) == pytest.approx(counted(fn, backward=False), rel=0.05)
    assert training_flops(net, batch) == pytest.approx(counted(fn, backward=True), rel=0.05)
    assert forward_flops(net, batch) == forward_flops(net, {"input_ids": batch["input_ids"]})
