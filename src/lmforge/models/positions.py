"""Positional encodings for the decoder families, in one place: what `model.net.position` chooses.

  learned     a trained table of max_seq_len vectors added to the token embeddings (GPT-2); cannot go past its length
  sinusoidal  the fixed table of Vaswani et al. 2017, section 3.5, added to the token embeddings; computed for any
              position, so it has no length limit of its own
  rope        rotary position embedding (Su et al. 2021) applied to queries and keys, in Hugging Face's rotate-half
              layout: dimension i is paired with i + head_dim/2 (not 2i with 2i+1 as in the paper), so Llama
              checkpoints convert with no permutation of the q/k weights
  alibi       a per-head linear penalty on the distance to each key, added to the attention scores (Press et al.
              2022), with the paper's slopes
  none        no positional information but the causal mask itself (NoPE, Kazemnejad et al. 2023)

Everything here is computed from the positions at each forward, not stored: nothing lands in a state dict (so the
Hugging Face key tables need no entry for it), a net built on the meta device needs nothing materialised, and a KV
cache at offset `start` gets the encodings of positions start, start+1, ... The elementwise work is small next to
the matmuls (RoPE: 3 multiply-adds per q/k element) and, like norms, is not counted in lmforge.flops.
"""

from __future__ import annotations

import math

import torch

from lmforge.errors import ConfigError

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
# Encodings that live in the embeddings (added to the token vectors) vs in attention.
ADDED_TO_EMBEDDINGS = ("learned", "sinusoidal")


def check_position(position: str, d_model: int, head_dim: int) -> None:
    """The choice exists and fits the dimensions it rotates or fills; a ConfigError naming the key otherwise."""
    if position not in POSITIONS:
        raise ConfigError(f"model.net.position={position!r} is not one of {', '.join(POSITIONS)}")
    if position == "rope" and head_dim % 2:
        raise ConfigError(
            f"model.net.position=rope rotates pairs of dimensions, but the head dim d_model / n_head = {head_dim} is "
            "odd; choose model.net.d_model and model.net.n_head so that d_model / n_head is even"
        )
    if position == "sinusoidal" and d_model % 2:
        raise ConfigError(
            f"model.net.position=sinusoidal fills (sin, cos) pairs, but model.net.d_model={d_model} is odd; "
            "choose an even d_model"
        )


# ------------------------------------------------------------------ sinusoidal


def sinusoidal_table(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """(*positions.shape, d_model): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)).
    `positions` (time,) or per token (batch, time)."""
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)
    angles = positions.float()[..., None] / torch.pow(10000.0, two_i / d_model)
    table = torch.empty(*positions.shape, d_model, dtype=torch.float32, device=positions.device)
    table[..., 0::2] = angles.sin()
    table[..., 1::2] = angles.cos()
    return table


# ------------------------------------------------------------------ rope


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (*positions.shape, head_dim) in fp32, of the rotation angles p * base^(-2i/head_dim),
    repeated for both halves (the rotate-half layout). Computed as Hugging Face's LlamaRotaryEmbedding does.
    `positions` (time,) or per token (batch, time)."""
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    with torch.autocast(device_type=positions.device.type, enabled=False):  # angles in fp32 even under bf16
        freqs = positions.float()[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension's halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (batch, heads, time, head_dim) by the angles of its positions (cos/sin: (time, head_dim), or per
    token (batch, time, head_dim))."""
    if cos.dim() == 3:  # per-token positions: the same angles for every head
        cos, sin = cos[:, None], sin[:, None]
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


# ------------------------------------------------------------------ alibi


def alibi_slopes(n_head: int) -> torch.Tensor:
    """The per-head slopes of Press et al. 2022: for n heads (a power of two) the geometric sequence 2^(-8/n),
    2^(-16/n), ..., 2^(-8); otherwise those of the closest smaller power of two, then every other slope of the
    next power of two (the paper's reference code)."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_2(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(power_of_2(closest) + alibi_slopes(2 * closest)[0::2].tolist()[: n_head - closest])


def alibi_bias(slopes: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """(heads, q_len, k_len) additive scores: -slope * (query position - key position), i.e. 0 for the query's own
    key and more negative the further back. Future keys are the causal mask's business (see `causal_mask`).
    With per-token positions (batch, q_len) and (batch, k_len): (batch, heads, q_len, k_len)."""
    distance = k_positions[..., None, :] - q_positions[..., :, None]  # <= 0 for keys a query may see
    return slopes.to(q_positions.device)[:, None, None] * distance[..., None, :, :].float()


# ------------------------------------------------------------------ the causal mask


def causal_mask(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """(q_len, k_len) boolean "may attend": a query sees its own and earlier positions."""
    return k_positions[None, :] <= q_positions[:, None]
