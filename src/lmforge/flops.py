"""Analytic FLOPs of one training step, per model family, from the net's config and the batch shapes.

What is counted is what `torch.utils.flop_counter.FlopCounterMode` counts (and what MFU, as in
the PaLM paper, is defined over): matrix multiplies, 2 FLOPs per multiply-add, including both
attention products (scores Q·Kᵀ and weights·V) over the full sequence — a causal mask saves no
FLOPs in the kernels that run. Norms, activations, softmax and the loss are left out (they are
~1% of a transformer's work). Padding is counted: the hardware computes it.

Backward is twice forward (a gradient for the input and one for the weight of every matmul),
so a training step is 3x forward; activation recomputation is not counted (that would be HFU).

Why not `lightning.fabric.utilities.throughput.measure_flops`: it runs the model under
FlopCounterMode, which on CPU does not see the fused SDPA kernel (attention would count as
zero), and it would have to run again for every new batch shape. The count here is exact for
our three families and checked against FlopCounterMode in tests/test_flops.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lmforge.models.bert import BERTConfig
from lmforge.models.gpt import GPTConfig
from lmforge.models.t5 import FEED_FORWARD, T5Config

BACKWARD_FACTOR = 2  # backward FLOPs per forward FLOP


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention(batch: int, q_len: int, k_len: int, inner: int) -> int:
    """Q·Kᵀ plus weights·V over all heads (inner = heads x head dim)."""
    return 2 * (2 * batch * q_len * k_len * inner)


def gpt_forward_flops(cfg: GPTConfig, batch: int, seq_len: int) -> int:
    n, d, ff = batch * seq_len, cfg.d_model, cfg.mlp_ratio * cfg.d_model
    layer = (
        _linear(n, d, 3 * d)
        + _linear(n, d, d)  # fused qkv, output projection
        + _attention(batch, seq_len, seq_len, d)
        + _linear(n, d, ff)
        + _linear(n, ff, d)
    )
    return cfg.n_layer * layer + _linear(n, d, cfg.vocab_size)  # + lm_head


def bert_forward_flops(cfg: BERTConfig, batch: int, seq_len: int) -> int:
    n, d = batch * seq_len, cfg.d_model
    layer = (
        4 * _linear(n, d, d)
        + _attention(batch, seq_len, seq_len, d)
        + _linear(n, d, cfg.d_ff)
        + _linear(n, cfg.d_ff, d)
    )
    head = _linear(n, d, d) + _linear(n, d, cfg.vocab_size)  # transform + decoder over every position
    return cfg.n_layer * layer + head


def t5_forward_flops(cfg: T5Config, batch: int, src_len: int, tgt_len: int) -> int:
    d, inner, ff = cfg.d_model, cfg.n_head * cfg.d_kv, cfg.d_ff
    gated = FEED_FORWARD[cfg.feed_forward][1]
    src, tgt = batch * src_len, batch * tgt_len

    def ffn(n: int) -> int:
        return (3 if gated else 2) * _linear(n, d, ff)

    encoder_layer = 4 * _linear(src, d, inner) + _attention(batch, src_len, src_len, inner) + ffn(src)
    decoder_layer = (
        4 * _linear(tgt, d, inner)
        + _attention(batch, tgt_len, tgt_len, inner)  # self-attention
        + 2 * _linear(tgt, d, inner)
        + 2 * _linear(src, d, inner)  # cross: q, o on tgt; k, v on src
        + _attention(batch, tgt_len, src_len, inner)
        + ffn(tgt)
    )
    return cfg.n_layer * encoder_layer + cfg.n_decoder_layer * decoder_layer + _linear(tgt, d, cfg.vocab_size)


def _net_config(net: nn.Module):
    net = getattr(net, "_orig_mod", net)  # torch.compile keeps the module here
    return getattr(net, "config", None)


def forward_flops(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> int | None:
    """FLOPs of `net`'s forward on `batch` (a dict with `input_ids`, and for T5 `decoder_input_ids`
    or `labels`); None for a net whose family is not known here."""
    cfg = _net_config(net)
    b, t = batch["input_ids"].shape[:2]
    if isinstance(cfg, GPTConfig):
        return gpt_forward_flops(cfg, b, t)
    if isinstance(cfg, BERTConfig):
        return bert_forward_flops(cfg, b, t)
    if isinstance(cfg, T5Config):
        target = batch.get("decoder_input_ids", batch.get("labels"))
        if target is None:
            return None
        return t5_forward_flops(cfg, b, t, target.shape[1])
    return None


def training_flops(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> int | None:
    """FLOPs of one forward + backward of `net` on `batch` (the optimizer step is negligible)."""
    fwd = forward_flops(net, batch)
    return None if fwd is None else (1 + BACKWARD_FACTOR) * fwd
