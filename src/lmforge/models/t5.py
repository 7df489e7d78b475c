"""T5 encoder-decoder in plain PyTorch: RMSNorm (no mean, no bias), pre-norm blocks without
biases, bucketed relative position bias (bidirectional in the encoder, causal in the decoder;
one table per stack, shared by its layers), cross-attention, and a KV cache for decoding.

`feed_forward="relu"` with `tie_word_embeddings=True` is T5 v1.0; `"gated-gelu"` with
`tie_word_embeddings=False` is T5 v1.1. Knows nothing of Lightning or losses: logits out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from lmforge.flops import attention_flops, linear_flops
from lmforge.models.base import FamilyNet
from lmforge.models.layers import Attention, FeedForward, check_length, padding_mask

# Per decoder layer: (self_k, self_v, cross_k, cross_v), each (batch, heads, time, d_kv).
T5Cache = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]

FEED_FORWARD = {"relu": ("relu", False), "gated-gelu": ("gelu_tanh", True)}  # name -> (activation, gated)


@dataclass
class T5Config:
    vocab_size: int
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    n_layer: int = 6
    n_decoder_layer: int | None = None  # None: as many as the encoder
    n_head: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    feed_forward: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    decoder_start_token_id: int = 0
    max_seq_len: int = 512  # relative positions have no hard limit; this bounds the inputs we accept

    def __post_init__(self) -> None:
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.feed_forward not in FEED_FORWARD:
            raise ValueError(
                f"model.net.feed_forward={self.feed_forward!r} is not supported; "
                f"choose one of {sorted(FEED_FORWARD)} (relu: T5 v1.0, gated-gelu: T5 v1.1)"
            )
        for key in ("pad_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, key) < self.vocab_size:
                raise ValueError(
                    f"model.net.{key}={getattr(self, key)} is outside the vocabulary [0, {self.vocab_size})"
                )


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: prepend the start token, drop the last label, -100 -> pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Mesh-TF T5 bucketing of (key - query) distances: exact buckets for small distances,
    log-spaced ones up to max_distance, one bucket beyond. Bidirectional splits the buckets
    between the two directions; otherwise (causal) only the past counts."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # clamp(min=1) keeps log() finite; those entries take the "small" branch anyway.
    large = (
        max_exact
        + (
            torch.log(distance.clamp(min=1).float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class Block(nn.Module):
    """Pre-norm block: self-attention, (decoder) cross-attention, feed-forward, each residual."""

    def __init__(self, cfg: T5Config, cross: bool):
        super().__init__()
        act, gated = FEED_FORWARD[cfg.feed_forward]

        def attention() -> Attention:
            return Attention(cfg.d_model, cfg.n_head, cfg.d_kv, bias=False, scale=1.0, dropout=cfg.dropout)

        self.cross = cross
        self.ln_1 = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = attention()
        if cross:
            self.ln_cross = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps)
            self.cross_attn = attention()
        self.ln_2 = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, activation=act, gated=gated, bias=False, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, bias, mask, past=None, enc=None, enc_mask=None):
        h = self.ln_1(x)
        k, v = self.attn.kv(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.drop(self.attn(h, (k, v), bias=bias, mask=mask))
        present = None
        if self.cross:
            # Cross-attention keys/values depend only on the encoder output: compute them once.
            ck, cv = (past[2], past[3]) if past is not None else self.cross_attn.kv(enc)
            x = x + self.drop(self.cross_attn(self.ln_cross(x), (ck, cv), mask=enc_mask))
            present = (k, v, ck, cv)
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x, present


class Stack(nn.Module):
    """The encoder (bidirectional) or decoder (causal, cross-attending) stack. HF keeps the
    relative-bias table in layer 0 and passes the bias on; one table per stack is the same thing."""

    def __init__(self, cfg: T5Config, n_layer: int, decoder: bool):
        super().__init__()
        self.cfg, self.decoder = cfg, decoder
        self.rel_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.n_head)
        self.blocks = nn.ModuleList(Block(cfg, cross=decoder) for _ in range(n_layer))
        self.ln_f = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def position_bias(self, q_len: int, k_len: int, offset: int, device) -> torch.Tensor:
        """(1, heads, q_len, k_len); queries sit at positions offset .. offset + q_len - 1."""
        q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(
            k_pos - q_pos,
            bidirectional=not self.decoder,
            num_buckets=self.cfg.relative_attention_num_buckets,
            max_distance=self.cfg.relative_attention_max_distance,
        )
        return self.rel_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x, mask=None, past=None, enc=None, enc_mask=None):
        t = x.size(1)
        offset = past[0][0].size(2) if past else 0
        bias = self.position_bias(t, offset + t, offset, x.device)
        x = self.drop(x)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, bias, mask, past[i] if past else None, enc, enc_mask)
            presents.append(present)
        return self.drop(self.ln_f(x)), presents


def t5_forward_flops(cfg: T5Config, batch: int, src_len: int, tgt_len: int) -> int:
    """Matmul FLOPs of one forward on (batch, src_len) encoder and (batch, tgt_len) decoder tokens (see
    lmforge/flops.py for what counts)."""
    d, inner, ff = cfg.d_model, cfg.n_head * cfg.d_kv, cfg.d_ff
    gated = FEED_FORWARD[cfg.feed_forward][1]
    src, tgt = batch * src_len, batch * tgt_len

    def ffn(n: int) -> int:
        return (3 if gated else 2) * linear_flops(n, d, ff)

    encoder_layer = 4 * linear_flops(src, d, inner) + attention_flops(batch, src_len, src_len, inner) + ffn(src)
    decoder_layer = (
        4 * linear_flops(tgt, d, inner)
        + attention_flops(batch, tgt_len, tgt_len, inner)  # self-attention
        + 2 * linear_flops(tgt, d, inner)
        + 2 * linear_flops(src, d, inner)  # cross: q, o on tgt; k, v on src
        + attention_flops(batch, tgt_len, src_len, inner)
        + ffn(tgt)
    )
    n_decoder_layer = cfg.n_layer if cfg.n_decoder_layer is None else cfg.n_decoder_layer
    return cfg.n_layer * encoder_layer + n_decoder_layer * decoder_layer + linear_flops(tgt, d, cfg.vocab_size)


class T5(FamilyNet):
    """Encoder-decoder transformer. Build with keyword arguments of `T5Config`."""

    def __init__(self, **kwargs):
        super().__init__()
        cfg = T5Config(**kwargs)
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layer, decoder=False)
        self.decoder = Stack(cfg, cfg.n_decoder_layer, decoder=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        self._init_weights()

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks, encoder then decoder: the units lmforge.parallel shards, checkpoints, compiles."""
        return [*self.encoder.blocks, *self.decoder.blocks]

    def init_weights(self) -> None:
        """(Re)draw every parameter. lmforge.parallel calls it to materialise a net built on the meta device."""
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Mesh-TF / HF T5 init: no 1/sqrt(d) in attention, so it is folded into the query init."""
        cfg = self.config
        nn.init.normal_(self.shared.weight, std=1.0)
        if not cfg.tie_word_embeddings:
            # HF draws N(0, 1) here; Mesh TF's dense default (fan-in) gives unit-variance logits.
            nn.init.normal_(self.lm_head.weight, std=cfg.d_model**-0.5)
        for m in self.modules():
            if isinstance(m, Attention):
                nn.init.normal_(m.q.weight, std=(cfg.d_model * cfg.d_kv) ** -0.5)
                nn.init.normal_(m.k.weight, std=cfg.d_model**-0.5)
                nn.init.normal_(m.v.weight, std=cfg.d_model**-0.5)
                nn.init.normal_(m.o.weight, std=(cfg.n_head * cfg.d_kv) ** -0.5)
            elif isinstance(m, FeedForward):
                for fc in (m.fc, m.fc_linear):
                    if fc is not None:
                        nn.init.normal_(fc.weight, std=cfg.d_model**-0.5)
                nn.init.normal_(m.proj.weight, std=cfg.d_ff**-0.5)
            elif isinstance(m, Stack):
                nn.init.normal_(m.rel_bias.weight, std=cfg.d_model**-0.5)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)

    def position_parameters(self) -> list[nn.Parameter]:
        # the relative position tables, as GPT drops its position table
        return [self.encoder.rel_bias.weight, self.decoder.rel_bias.weight]

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        """None for a batch without the decoder side (`decoder_input_ids`, or the `labels` they are made from)."""
        target = batch.get("decoder_input_ids", batch.get("labels"))
        if target is None:
            return None
        b, t = batch["input_ids"].shape[:2]
        return t5_forward_flops(self.config, b, t, target.shape[1])

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states (batch, src_len, d_model)."""
        check_length(input_ids.size(1), self.config.max_seq_len)
        hidden, _ = self.encoder(self.shared(input_ids), mask=padding_mask(attention_mask))
        return hidden

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: T5Cache | None = None,
        use_cache: bool = False,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, T5Cache]:
        """Logits (batch, tgt_len, vocab) for the decoder tokens; with `use_cache`, also the cache.
        With `past_key_values`, pass only the new tokens; `encoder_hidden` may then be None (the
        cross-attention keys/values are cached). `encoder_attention_mask` is needed on every call.
        `decoder_attention_mask` (batch, past + new) masks padded decoder keys on top of the causal mask."""
        if encoder_hidden is None and not past_key_values:
            raise ValueError("T5.decode needs encoder_hidden (from encode) unless past_key_values holds it")
        t = decoder_input_ids.size(1)
        offset = past_key_values[0][0].size(2) if past_key_values else 0
        check_length(offset + t, self.config.max_seq_len)
        # Causal mask offset by the cached length: query i (at offset + i) sees keys 0 .. offset + i.
        mask = torch.ones(t, offset + t, dtype=torch.bool, device=decoder_input_ids.device).tril(diagonal=offset)
        if (padded := padding_mask(decoder_attention_mask)) is not None:
            mask = mask & padded
        hidden, cache = self.decoder(
            self.shared(decoder_input_ids),
            mask=mask,
            past=past_key_values,
            enc=encoder_hidden,
            enc_mask=padding_mask(encoder_attention_mask),
        )
        if self.config.tie_word_embeddings:
            hidden = hidden * self.config.d_model**-0.5  # T5 v1.0 rescales before the tied output layer
        logits = self.lm_head(hidden)
        return (logits, cache) if use_cache else logits

    @staticmethod
    def reorder_cache(cache: T5Cache, index: torch.Tensor) -> T5Cache:
        """Select/reorder batch rows of a cache (beam search)."""
        return [
            (sk.index_select(0, index), sv.index_select(0, index), ck.index_select(0, index), cv.index_select(0, index))
            for sk, sv, ck, cv in cache
        ]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, tgt_len, vocab). Build `decoder_input_ids` from labels with `shift_right`."""
        if decoder_input_ids is None:
            raise ValueError("T5.forward needs decoder_input_ids; build them from labels with shift_right(labels, ...)")
        enc = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask=decoder_attention_mask)
        return cast(torch.Tensor, logits)  # without use_cache, decode returns the logits alone
