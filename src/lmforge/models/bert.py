"""BERT in plain PyTorch: word + learned position + token-type embeddings with a LayerNorm,
post-LayerNorm encoder blocks with exact (erf) GELU, and the masked-LM head
(dense + GELU + LayerNorm + decoder tied to the word embeddings, plus a bias). With `pair_head=True`
also the pooler (dense + tanh over [CLS], as HF's BertPooler) and the binary sentence-pair head of
next-sentence / sentence-order prediction (HF's BertForPreTraining), read by `pretraining_logits`.

Knows nothing of Lightning or of losses: `forward` maps token ids to logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from lmforge.flops import attention_flops, linear_flops
from lmforge.models.base import FamilyNet, check_heads_divide, init_normal
from lmforge.models.layers import ACTIVATIONS, Attention, FeedForward, check_length, padding_mask


@dataclass
class BERTConfig:
    vocab_size: int
    max_seq_len: int = 512
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 3072
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    pair_head: bool = False  # pooler + NSP/SOP classifier (objectives/nsp.py); off: the plain MLM net

    def __post_init__(self) -> None:
        check_heads_divide(self.d_model, self.n_head)
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"model.net.pad_token_id={self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})"
            )


class Block(nn.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + mlp(x)), as the original BERT."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_head, cfg.d_model // cfg.n_head, bias=True, dropout=cfg.dropout)
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, activation="gelu", bias=True)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.drop(self.attn(x, mask=mask)))
        return self.ln_2(x + self.drop(self.mlp(x)))


def bert_forward_flops(cfg: BERTConfig, batch: int, seq_len: int) -> int:
    """Matmul FLOPs of one forward on (batch, seq_len) token ids (see lmforge/flops.py for what counts)."""
    n, d = batch * seq_len, cfg.d_model
    layer = (
        4 * linear_flops(n, d, d)
        + attention_flops(batch, seq_len, seq_len, d)
        + linear_flops(n, d, cfg.d_ff)
        + linear_flops(n, cfg.d_ff, d)
    )
    head = linear_flops(n, d, d) + linear_flops(n, d, cfg.vocab_size)  # transform + decoder over every position
    if cfg.pair_head:  # pooler + pair classifier over the [CLS] row of each example
        head += linear_flops(batch, d, d) + linear_flops(batch, d, 2)
    return cfg.n_layer * layer + head


class BERT(FamilyNet):
    """Bidirectional encoder with an MLM head. Build with keyword arguments of `BERTConfig`."""

    def __init__(self, **kwargs):
        super().__init__()
        cfg = BERTConfig(**kwargs)
        self.config = cfg
        # padding_idx as HF: the pad row starts at zero and gets no gradient from the input side.
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.ln_emb = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # MLM head: transform, then project onto the (tied) word embeddings.
        self.head_fc = nn.Linear(cfg.d_model, cfg.d_model)
        self.head_ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)
        self.lm_head.weight = self.wte.weight
        if cfg.pair_head:  # built only when asked: a plain BERT's state dict (checkpoints, HF export) is unchanged
            self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
            self.pair_cls = nn.Linear(cfg.d_model, 2)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)draw every parameter. lmforge.parallel calls it to materialise a net built on the meta device."""
        self.apply(init_normal)  # BERT: N(0, 0.02) weights, zero biases, unit LayerNorms
        if self.config.pad_token_id is not None:  # after apply: the tied lm_head init drew over the pad row
            self.wte.weight[self.config.pad_token_id].zero_()

    def position_parameters(self) -> list[nn.Parameter]:
        return [self.wpe.weight, self.wtt.weight]

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        """With the pair head: one `pretraining_logits` call (what training runs), pooler and classifier included."""
        b, t = batch["input_ids"].shape[:2]
        return bert_forward_flops(self.config, b, t)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last block's output (batch, time, d_model): what the MLM head, the pair head and task heads
        (models/heads.py) read."""
        b, t = input_ids.shape
        check_length(t, self.config.max_seq_len)
        pos = torch.arange(t, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        x = x + (self.wtt(token_type_ids) if token_type_ids is not None else self.wtt.weight[0])
        x = self.drop(self.ln_emb(x))
        mask = padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def mlm_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, d_model) hidden states -> (batch, time, vocab) logits."""
        return self.lm_head(self.head_ln(ACTIVATIONS["gelu"](self.head_fc(x))))

    @overload
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = ...,
        token_type_ids: torch.Tensor | None = ...,
        with_pair_logits: Literal[False] = ...,
    ) -> torch.Tensor: ...

    @overload
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        with_pair_logits: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        with_pair_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, time, vocab). `attention_mask` (batch, time): 1 = token, 0 = padding;
        padding keys are masked out, so padded positions cannot influence the others. With `with_pair_logits`,
        (those logits, pair logits (batch, 2)): see `pretraining_logits`. One forward for both, so that FSDP's
        hooks on the root (which gather the embeddings and heads) run for the pair head too."""
        x = self.hidden_states(input_ids, attention_mask, token_type_ids)
        if not with_pair_logits:
            return self.mlm_logits(x)
        if not self.config.pair_head:
            raise ValueError("this BERT has no pair head: build it with pair_head=True (model=bert_nsp)")
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (batch, d_model): the [CLS] row
        return self.mlm_logits(x), self.pair_cls(pooled)

    def pretraining_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLM logits (batch, time, vocab), pair logits (batch, 2)): HF BertForPreTraining's prediction_logits and
        seq_relationship_logits (class 0: B follows A / is in order; 1: B is random / swapped)."""
        return self(input_ids, attention_mask, token_type_ids, True)
