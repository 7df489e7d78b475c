"""GPT-2 architecture in plain PyTorch: learned positions, pre-LayerNorm blocks, GELU MLP,
tied input/output embeddings and causal scaled-dot-product attention with a KV cache.

Knows nothing of Lightning or of losses: `forward` maps token ids to logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.flops import attention_flops, linear_flops
from lmforge.models.base import FamilyNet, PipelinePlan, check_heads_divide, init_normal
from lmforge.models.masks import check_mask_without_cache
from lmforge.models.tp_plan import HeadShardedQKV, TPPlan, decoder_tp_plan

# A KV cache is one (key, value) pair per layer, each (batch, heads, time, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GPTConfig:
    vocab_size: int
    max_seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    # the LM head shares the token embedding's weight, as GPT-2; false: its own (pipeline parallelism needs it)
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        check_heads_divide(self.d_model, self.n_head)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`attn_mask`: None for the causal mask, else a boolean "may attend" (batch, 1, t, t) that replaces it
        (lmforge.models.masks: documents, prefixes); only without a cache."""
        b, t, _ = x.shape
        # (b, t, 3 * heads * head_dim) -> three (b, heads, t, head_dim). `heads` is read off the output, not taken
        # from n_head: under tensor parallelism (parallel/tensor.py) this rank computes only its share of the heads.
        q, k, v = self.qkv(x).chunk(3, dim=2)
        q, k, v = (z.view(b, t, -1, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        drop = self.dropout if self.training else 0.0
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        elif past is None or t > 1:
            # Queries are the last t positions of k; with a cache, the causal mask is offset.
            offset = k.size(2) - t
            if offset == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
            else:
                mask = torch.ones(t, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=offset)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        else:  # a single new token attends to everything cached
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(b, t, -1)  # (b, t, heads * head_dim)
        return self.proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, past=None, attn_mask=None):
        a, present = self.attn(self.ln_1(x), past, attn_mask)
        x = x + self.drop(a)
        x = x + self.mlp(self.ln_2(x))
        return x, present


def gpt_forward_flops(cfg: GPTConfig, batch: int, seq_len: int) -> int:
    """Matmul FLOPs of one forward on (batch, seq_len) token ids (see lmforge/flops.py for what counts)."""
    n, d, ff = batch * seq_len, cfg.d_model, cfg.mlp_ratio * cfg.d_model
    layer = (
        linear_flops(n, d, 3 * d)
        + linear_flops(n, d, d)  # fused qkv, output projection
        + attention_flops(batch, seq_len, seq_len, d)
        + linear_flops(n, d, ff)
        + linear_flops(n, ff, d)
    )
    return cfg.n_layer * layer + linear_flops(n, d, cfg.vocab_size)  # + lm_head


class GPT(FamilyNet):
    """Decoder-only transformer. Build with keyword arguments of `GPTConfig`."""

    def __init__(self, **kwargs):
        super().__init__()
        cfg = GPTConfig(**kwargs)
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight  # tied embeddings, as GPT-2
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)draw every parameter. lmforge.parallel calls it to materialise a net built on the meta device."""
        self.apply(init_normal)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def position_parameters(self) -> list[nn.Parameter]:
        return [self.wpe.weight]

    @staticmethod
    def tp_sharded_sizes(**kwargs) -> dict[str, int]:
        """What tensor parallelism splits evenly, by the config key that sets it (parallel/tensor.py checks)."""
        cfg = GPTConfig(**{"vocab_size": 1, **kwargs})
        return {
            "model.net.n_head": cfg.n_head,
            "the MLP width model.net.mlp_ratio x d_model": cfg.mlp_ratio * cfg.d_model,
        }

    def tp_plan(self, sequence_parallel: bool = False) -> TPPlan:
        """Tensor-parallel plan (applied by lmforge.parallel.tensor). The fused qkv is not column-sharded: its
        rows are [q | k | v], so an even split of them would hand a rank all of q and half of k. Its weight stays
        replicated and each rank keeps only its heads of the output (HeadShardedQKV); attention, the output
        projection and the MLP are sharded. The embedding and LM head are tied and stay replicated: the loss needs
        the whole logits on every rank for the objectives' metrics."""
        return decoder_tp_plan(
            attention={
                "attn.qkv": HeadShardedQKV(self.config.n_head, self.config.d_model // self.config.n_head),
                "attn.proj": "row",
            },
            mlp={"mlp.fc": "col", "mlp.proj": "row"},
            norms=("ln_1", "ln_2"),
            final_norm="ln_f",
            block_args=3,  # Block(x, past, attn_mask)
            attn_args=3,  # CausalSelfAttention(x, past, attn_mask)
            vocab_parallel=False,
            sequence_parallel=sequence_parallel,
        )

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        b, t = batch["input_ids"].shape[:2]
        return gpt_forward_flops(self.config, b, t)

    @staticmethod
    def pipeline_plan() -> PipelinePlan:
        """What a pipeline stage holds besides its blocks (lmforge.parallel.pipeline): the embeddings in the first
        stage, the final norm and LM head in the last."""
        return PipelinePlan(first=("wte", "wpe"), last=("ln_f", "lm_head"))

    def pipeline_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pipeline stage's share of `forward` on a net that holds only some of its parts (the others are
        None): token ids -> embeddings where it holds them, its blocks, the final norm and logits where it holds
        the head. Causal attention only (no cache, positions, or masks)."""
        if self.wte is not None:
            x = self.drop(self.wte(x) + self.wpe(torch.arange(x.size(1), device=x.device)))
        for block in self.blocks:
            if block is not None:
                x = block(x)[0]
        if self.lm_head is not None:
            x = self.lm_head(self.ln_f(x))
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """Logits (batch, time, vocab); with `use_cache`, also the updated KV cache.

        `position_ids` (batch, time): each token's position (default: its index, after the cache's); `attn_mask`: a
        boolean "may attend" (batch, 1, time, time) replacing the causal mask (see lmforge.models.masks)."""
        x, presents = self._trunk(input_ids, past_key_values, position_ids, attn_mask)
        logits = self.lm_head(x)
        return (logits, presents) if use_cache else logits

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm's output (batch, time, d_model): what the LM head and task heads (models/heads.py)
        read."""
        return self._trunk(input_ids, None, None, None)[0]

    def _trunk(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None,
        position_ids: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, KVCache]:
        b, t = input_ids.shape
        start = past_key_values[0][0].size(2) if past_key_values else 0
        if start + t > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + t} tokens exceeds the model's context of {self.config.max_seq_len} "
                "(model.net.max_seq_len); shorten the input or raise max_seq_len"
            )
        check_mask_without_cache(attn_mask, past_key_values)
        pos = torch.arange(start, start + t, device=input_ids.device) if position_ids is None else position_ids
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        presents: KVCache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, past_key_values[i] if past_key_values else None, attn_mask)
            presents.append(present)
        return self.ln_f(x), presents
