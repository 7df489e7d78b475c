"""Pieces shared by the encoder families (BERT, T5): multi-head attention over an additive
bias and a boolean mask, a (gated) feed-forward, and input checks.

GPT keeps its own fused-QKV causal attention: its only mask is causal, which SDPA does fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact erf GELU (HF "gelu", BERT)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # HF "gelu_new" (GPT-2, T5 v1.1)
}


class Attention(nn.Module):
    """Multi-head attention. Queries come from `x`; keys/values are passed in (see `kv`) so the
    caller decides between self-attention, cross-attention and cached keys.

    `bias` is an additive float score bias (T5 relative positions), `mask` a boolean
    "may attend" tensor; both broadcast to (batch, heads, q_len, k_len).
    `scale=None` means 1/sqrt(d_head); T5 uses 1.0 (its scale is folded into the init).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        d_head: int,
        bias: bool = True,
        scale: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_head, self.d_head, self.scale, self.dropout = n_head, d_head, scale, dropout
        inner = n_head * d_head
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.k = nn.Linear(d_model, inner, bias=bias)
        self.v = nn.Linear(d_model, inner, bias=bias)
        self.o = nn.Linear(inner, d_model, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.d_head).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `x`, each (batch, heads, time, d_head): what a cache stores."""
        return self._heads(self.k(x)), self._heads(self.v(x))

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self._heads(self.q(x))
        k, v = kv if kv is not None else self.kv(x)
        attn_mask = None
        if bias is not None or mask is not None:
            # A float mask in the compute dtype; masked scores get the dtype's finite minimum,
            # not -inf, so a fully masked row (an all-padding example) gives no NaN.
            attn_mask = torch.zeros((), dtype=q.dtype, device=q.device) if bias is None else bias.to(q.dtype)
            if mask is not None:
                attn_mask = torch.where(mask, attn_mask, torch.finfo(q.dtype).min)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        b, _, t, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(b, t, self.n_head * self.d_head))


class FeedForward(nn.Module):
    """Position-wise MLP: proj(act(fc(x))), or with `gated` proj(act(fc(x)) * fc_linear(x)) (GEGLU).
    `dropout` applies to the hidden activation (as T5); residual dropout is the block's business."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        gated: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[activation]
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_linear = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        if self.fc_linear is not None:
            h = h * self.fc_linear(x)
        return self.proj(self.drop(h))


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, k_len) with 1 = token, 0 = padding -> boolean (batch, 1, 1, k_len) "may attend"."""
    if attention_mask is None:
        return None
    return attention_mask[:, None, None, :].bool()


def check_length(n: int, limit: int, key: str = "model.net.max_seq_len") -> None:
    if n > limit:
        raise ValueError(
            f"sequence of {n} tokens exceeds the model's context of {limit} ({key}); "
            "shorten the input or raise max_seq_len"
        )
