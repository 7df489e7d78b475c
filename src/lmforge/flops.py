"""Analytic FLOPs of one training step: each net counts its own forward (`Net.forward_flops(batch)`, from its
config and the batch shapes, with the helpers here); a training step is 3x that.

What is counted is what `torch.utils.flop_counter.FlopCounterMode` counts (and what MFU, as in
the PaLM paper, is defined over): matrix multiplies, 2 FLOPs per multiply-add, including both
attention products (scores Q·Kᵀ and weights·V) over the full sequence — a causal mask saves no
FLOPs in the kernels that run. Norms, activations, softmax and the loss are left out (they are
~1% of a transformer's work). Padding is counted: the hardware computes it.

Backward is twice forward (a gradient for the input and one for the weight of every matmul),
so a training step is 3x forward; activation recomputation is not counted (that would be HFU).

Why not `lightning.fabric.utilities.throughput.measure_flops`: it runs the model under
FlopCounterMode, which on CPU does not see the fused SDPA kernel (attention would count as
zero), and it would have to run again for every new batch shape. The families' counts are exact and
checked against FlopCounterMode in tests/models/test_flops.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lmforge.protocols import Net

BACKWARD_FACTOR = 2  # backward FLOPs per forward FLOP


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    """A Linear layer applied to `tokens` rows."""
    return 2 * tokens * d_in * d_out


def attention_flops(batch: int, q_len: int, k_len: int, inner: int) -> int:
    """Q·Kᵀ plus weights·V over all heads (inner = heads x head dim)."""
    return 2 * (2 * batch * q_len * k_len * inner)


def forward_flops(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> int | None:
    """FLOPs of `net`'s forward on `batch` (a dict with `input_ids`, and whatever else the family reads, e.g.
    T5's `decoder_input_ids` or `labels`); None for a net that does not count its own (not a `Net`)."""
    net = getattr(net, "_orig_mod", net)  # torch.compile(net) returns a wrapper that keeps the module here
    return net.forward_flops(batch) if isinstance(net, Net) else None


def training_flops(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> int | None:
    """FLOPs of one forward + backward of `net` on `batch` (the optimizer step is negligible)."""
    fwd = forward_flops(net, batch)
    return None if fwd is None else (1 + BACKWARD_FACTOR) * fwd
