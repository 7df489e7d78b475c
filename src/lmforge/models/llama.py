"""Llama-style decoder in plain PyTorch: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, no biases,
tied or untied embeddings; with a KV cache for generation.

The defaults are Llama's; `position`, `norm` and `mlp` make the family a workbench for what each piece buys:
  position  rope | learned | sinusoidal | alibi | none   (lmforge/models/positions.py)
  norm      rmsnorm | layernorm                          (LayerNorm without bias: the family has no biases)
  mlp       swiglu | gelu                                (gelu: down(gelu_tanh(up(x))), GPT-2's MLP without biases)
Only the defaults (rope, rmsnorm, swiglu) are a Hugging Face `LlamaForCausalLM`; models/llama_hf.py refuses the rest.

RoPE layout: rotate-half, as Hugging Face's Llama: the head dimension's first half is rotated against its second
half (dimension i pairs with i + head_dim/2), not interleaved pairs (2i, 2i+1) as in the RoFormer paper and Meta's
original checkpoints. The two layouts are the same function up to a fixed permutation of each head's q and k
output rows; implementing HF's layout here means conversion copies q_proj/k_proj as they are, with no permutation.

Grouped-query attention: `n_kv_head` key/value heads, each shared by n_head / n_kv_head query heads (consecutive
query heads share one, as HF's repeat_kv); n_kv_head = n_head is multi-head attention, 1 is multi-query. The KV
cache keeps the n_kv_head heads (after RoPE), which is the memory GQA saves.

Init: N(0, 0.02) for every weight as Hugging Face's Llama, with GPT-2's 1/sqrt(2 n_layer) on the residual output
projections (attn.o, mlp.down) so that this family and GPT start alike and comparisons measure the architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.flops import attention_flops, linear_flops
from lmforge.models.base import FamilyNet, PipelinePlan
from lmforge.models.masks import check_mask_without_cache
from lmforge.models.positions import (
    ADDED_TO_EMBEDDINGS,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    causal_mask,
    check_position,
    rope_cos_sin,
    sinusoidal_table,
)
from lmforge.models.tp_plan import TPPlan, decoder_tp_plan

# A KV cache is one (key, value) pair per layer, each (batch, n_kv_head, time, head_dim), keys already rotated.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]
NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu")


def default_d_ff(d_model: int, mlp: str) -> int:
    """SwiGLU: 8/3 d_model rounded up to a multiple of 64 (Llama's rule: about the parameters of a 4 d_model
    two-matrix MLP in three matrices); GELU: 4 d_model."""
    return 64 * math.ceil(8 * d_model / 3 / 64) if mlp == "swiglu" else 4 * d_model


def _divisors(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1) if n % i == 0)


@dataclass
class LlamaConfig:
    vocab_size: int
    max_seq_len: int = 2048
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: n_head (multi-head attention); 1: multi-query
    d_model: int = 256
    d_ff: int | None = None  # None: default_d_ff(d_model, mlp)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    dropout: float = 0.0
    position: str = "rope"
    norm: str = "rmsnorm"
    mlp: str = "swiglu"

    def __post_init__(self) -> None:
        for key, value in (("n_layer", self.n_layer), ("n_head", self.n_head), ("d_model", self.d_model)):
            if value < 1:
                raise ConfigError(f"model.net.{key}={value} must be a positive integer")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.net.d_model={self.d_model} is not divisible by model.net.n_head={self.n_head}; "
                "choose d_model as a multiple of n_head"
            )
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.net.n_head={self.n_head} is not divisible by model.net.n_kv_head={self.n_kv_head}; "
                f"accepted n_kv_head values for n_head={self.n_head}: {_divisors(self.n_head)} "
                "(n_head: multi-head, 1: multi-query)"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"model.net.norm={self.norm!r} is not one of {', '.join(NORMS)}")
        if self.mlp not in MLPS:
            raise ConfigError(f"model.net.mlp={self.mlp!r} is not one of {', '.join(MLPS)}")
        check_position(self.position, self.d_model, self.head_dim)
        if self.position == "rope" and self.rope_theta <= 0:
            raise ConfigError(f"model.net.rope_theta={self.rope_theta} must be positive")
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.d_model, self.mlp)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back, as Hugging Face's LlamaRMSNorm (bit for bit)."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: LlamaConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE or ALiBi (or neither), over SDPA."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        assert cfg.n_kv_head is not None
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`rope`: (cos, sin) of the new tokens' positions; `mask`: None for SDPA's own causal mask, else a boolean
        "may attend" or an additive float bias (ALiBi, causal mask folded in), broadcastable to (b, h, t, k_len)."""
        b, t, _ = x.shape
        # Head counts are read off the projections' outputs: under tensor parallelism (parallel/tensor.py) q, k, v
        # are column-sharded and this rank holds n_head / tp query and n_kv_head / tp key/value heads.
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (b, heads, t, head_dim)
        k = self.k(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (b, kv_heads, t, head_dim)
        v = self.v(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        n_head, n_kv_head = q.size(1), k.size(1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        present = (k, v)
        if n_kv_head != n_head:  # each kv head serves n_head / n_kv_head consecutive query heads
            groups = n_head // n_kv_head
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o(y.transpose(1, 2).reshape(b, t, n_head * self.head_dim)), present


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020); or GELU: down(gelu_tanh(up(x)))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        assert cfg.d_ff is not None
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False) if cfg.mlp == "swiglu" else None
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(F.gelu(self.up(x), approximate="tanh"))
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.norm_1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, past=None):
        a, present = self.attn(self.norm_1(x), rope, mask, past)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm_2(x)))
        return x, present


def llama_forward_flops(cfg: LlamaConfig, batch: int, seq_len: int) -> int:
    """Matmul FLOPs of one forward on (batch, seq_len) token ids (see lmforge/flops.py for what counts): q and o at
    full width, k and v at n_kv_head heads (GQA's saving), both attention products over all n_head query heads (the
    repeated kv heads are multiplied all the same), SwiGLU's three matrices (GELU: two) and the output layer.
    RoPE's rotation, ALiBi's bias and the norms are elementwise, not matmuls: not counted, as FlopCounterMode."""
    assert cfg.n_kv_head is not None and cfg.d_ff is not None
    n, d, inner, kv = batch * seq_len, cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    attention = (
        2 * linear_flops(n, d, inner) + 2 * linear_flops(n, d, kv) + attention_flops(batch, seq_len, seq_len, inner)
    )
    mlp = (3 if cfg.mlp == "swiglu" else 2) * linear_flops(n, d, cfg.d_ff)
    return cfg.n_layer * (attention + mlp) + linear_flops(n, d, cfg.vocab_size)


class Llama(FamilyNet):
    """Decoder-only transformer, Llama-style. Build with keyword arguments of `LlamaConfig`."""

    def __init__(self, **kwargs):
        super().__init__()
        cfg = LlamaConfig(**kwargs)
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight
        # ALiBi's slopes are constants of n_head, recomputed per forward (cheap): no buffer to materialise or save.
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)draw every parameter. lmforge.parallel calls it to materialise a net built on the meta device."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, RMSNorm | nn.LayerNorm):
                nn.init.ones_(module.weight)
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def position_parameters(self) -> list[nn.Parameter]:
        return [self.wpe.weight] if self.wpe is not None else []

    @staticmethod
    def tp_sharded_sizes(**kwargs) -> dict[str, int]:
        """What tensor parallelism splits evenly, by the config key that sets it (parallel/tensor.py checks)."""
        cfg = LlamaConfig(**{"vocab_size": 1, **kwargs})
        assert cfg.n_kv_head is not None and cfg.d_ff is not None
        if cfg.position == "alibi":
            raise ConfigError(
                "tensor parallelism with model.net.position=alibi is not supported: ALiBi's bias covers all n_head "
                "heads while a rank computes only its share; use position=rope, or tensor_parallel_size=1."
            )
        return {"model.net.n_head": cfg.n_head, "model.net.n_kv_head": cfg.n_kv_head, "model.net.d_ff": cfg.d_ff}

    def tp_plan(self, sequence_parallel: bool = False) -> TPPlan:
        """Tensor-parallel plan (applied by lmforge.parallel.tensor): column-parallel q, k, v and MLP gate/up,
        row-parallel o and down; untied, the embedding is vocabulary-parallel (rows split) and the LM head
        column-parallel with its logits gathered (the objectives' metrics need every rank to see the whole
        vocabulary); tied, both stay replicated (one tensor cannot be distributed twice)."""
        if self.config.position == "alibi":
            raise ConfigError(
                "tensor parallelism with model.net.position=alibi is not supported: ALiBi's bias covers all n_head "
                "heads while a rank computes only its share; use position=rope, or tensor_parallel_size=1."
            )
        mlp: dict[str, Any] = {"mlp.up": "col", "mlp.down": "row"}
        if self.config.mlp == "swiglu":
            mlp["mlp.gate"] = "col"
        return decoder_tp_plan(
            attention={"attn.q": "col", "attn.k": "col", "attn.v": "col", "attn.o": "row"},
            mlp=mlp,
            norms=("norm_1", "norm_2"),
            final_norm="norm_f",
            block_args=4,  # Block(x, rope, mask, past)
            attn_args=4,  # Attention(x, rope, mask, past)
            vocab_parallel=not self.config.tie_word_embeddings,
            sequence_parallel=sequence_parallel,
        )

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        b, t = batch["input_ids"].shape[:2]
        return llama_forward_flops(self.config, b, t)

    @staticmethod
    def pipeline_plan() -> PipelinePlan:
        """What a pipeline stage holds besides its blocks (lmforge.parallel.pipeline): the embeddings (and a learned
        position table) in the first stage, the final norm and LM head in the last."""
        return PipelinePlan(first=("wte", "wpe"), last=("norm_f", "lm_head"))

    def pipeline_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pipeline stage's share of `forward` on a net that holds only some of its parts (the others are
        None): token ids -> embeddings where it holds them, its blocks (each stage recomputes the rotary tables
        and the mask from the positions 0..t-1), the final norm and logits where it holds the head. Causal
        attention only (no cache, positions, or masks)."""
        cfg = self.config
        pos = torch.arange(x.size(1), device=x.device)
        if self.wte is not None:
            x = self.wte(x)
            if cfg.position in ADDED_TO_EMBEDDINGS:
                pe = self.wpe(pos) if self.wpe is not None else sinusoidal_table(pos, cfg.d_model)
                x = x + pe.to(x.dtype)
            x = self.drop(x)
        rope = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta) if cfg.position == "rope" else None
        mask = self._attention_mask(pos, pos)
        for block in self.blocks:
            if block is not None:
                x = block(x, rope, mask)[0]
        if self.lm_head is not None:
            x = self.lm_head(self.norm_f(x))
        return x

    def _attention_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """None where SDPA's is_causal is the mask (no cache: queries and keys are the same positions; or a single
        new token, which sees every cached key); else boolean, or ALiBi's float bias with the causal mask in it."""
        causal = causal_mask(q_pos, k_pos)
        if self.config.position == "alibi":
            bias = alibi_bias(alibi_slopes(self.config.n_head), q_pos, k_pos)
            return bias.masked_fill(~causal, float("-inf"))
        if q_pos.numel() == k_pos.numel() or q_pos.numel() == 1:
            return None
        return causal

    def _given_mask(self, attn_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """A caller's boolean mask as SDPA takes it: itself, or under ALiBi the bias with the mask folded in."""
        if self.config.position != "alibi":
            return attn_mask
        bias = alibi_bias(alibi_slopes(self.config.n_head), positions, positions)
        return bias.masked_fill(~attn_mask, float("-inf"))

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """Logits (batch, time, vocab); with `use_cache`, also the updated KV cache.

        `position_ids` (batch, time): each token's position for every encoding (default: its index, after the
        cache's); `attn_mask`: a boolean "may attend" (batch, 1, time, time) replacing the causal mask (see
        lmforge.models.masks); ALiBi's distances are then measured between the tokens' positions."""
        x, presents = self._trunk(input_ids, past_key_values, position_ids, attn_mask)
        logits = self.lm_head(x)
        return (logits, presents) if use_cache else logits

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final norm's output (batch, time, d_model): what the LM head and task heads (models/heads.py) read."""
        return self._trunk(input_ids, None, None, None)[0]

    def _trunk(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None,
        position_ids: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, KVCache]:
        cfg = self.config
        b, t = input_ids.shape
        start = past_key_values[0][0].size(2) if past_key_values else 0
        if cfg.position == "learned" and start + t > cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + t} tokens exceeds the learned position table of {cfg.max_seq_len} "
                "(model.net.max_seq_len); shorten the input or raise max_seq_len"
            )
        check_mask_without_cache(attn_mask, past_key_values)
        device = input_ids.device
        q_pos = torch.arange(start, start + t, device=device) if position_ids is None else position_ids
        x = self.wte(input_ids)
        if cfg.position in ADDED_TO_EMBEDDINGS:
            assert cfg.position == "sinusoidal" or self.wpe is not None
            pe = self.wpe(q_pos) if self.wpe is not None else sinusoidal_table(q_pos, cfg.d_model)
            x = x + pe.to(x.dtype)
        x = self.drop(x)
        rope = rope_cos_sin(q_pos, cfg.head_dim, cfg.rope_theta) if cfg.position == "rope" else None
        if attn_mask is None:
            mask = self._attention_mask(q_pos, torch.arange(start + t, device=device))
        else:  # queries and keys at the same positions (no cache)
            mask = self._given_mask(attn_mask, q_pos)
        presents: KVCache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, rope, mask, past_key_values[i] if past_key_values else None)
            presents.append(present)
        return self.norm_f(x), presents
