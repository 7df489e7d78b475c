"""Prefix language modelling for the decoder families (`model=gpt_prefix`, `model=llama_prefix`): each block is split
at a point drawn per example; attention is bidirectional inside the prefix and causal after it (lmforge.models.masks),
and the loss is on the suffix only, as in T5's and UniLM's prefix LM. Generation encodes the prompt as the prefix and
continues causally (lmforge.generation.sample_after_prefix); CausalLM's sample_texts, through this `generate`, makes
[eos] + the prompt the prefix.

The split: `prefix_min` and `prefix_max` bound the prefix's share of the block; each example's prefix length is drawn
uniformly from the whole numbers of tokens in [ceil(prefix_min * block_len), floor(prefix_max * block_len)], from the
batch's rng (seeded per batch by the loader: the same split for a seed, with any number of workers, after a resume,
and the same validation splits at every evaluation). At least one token must be left to predict.

The targets inside the prefix are ignored: a prefix position sees the token it would predict. The first suffix token
is a target (predicted from the last prefix position, which sees only the prefix). `val/loss` is over suffix tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmforge import generation
from lmforge.errors import ConfigError
from lmforge.objectives.clm import CausalLM, PackedCausalBatches
from lmforge.objectives.losses import IGNORE_INDEX


def prefix_bounds(prefix_min: float, prefix_max: float, block_len: int) -> tuple[int, int]:
    """The fewest and most prefix tokens of a block; a ConfigError naming the keys if the bounds leave no suffix
    or no whole number of tokens."""
    if not 0 <= prefix_min <= prefix_max <= 1:
        raise ConfigError(
            f"model.prefix_min={prefix_min} and model.prefix_max={prefix_max} must satisfy "
            "0 <= prefix_min <= prefix_max < 1 (shares of each block that are prefix)"
        )
    lo, hi = math.ceil(prefix_min * block_len), math.floor(prefix_max * block_len)
    if hi > block_len - 1:
        raise ConfigError(
            f"model.prefix_max={prefix_max} lets the prefix take all {block_len} tokens of a block (data.seq_len), "
            "leaving no suffix to predict; choose prefix_max < 1, e.g. 0.75"
        )
    if lo > hi:
        raise ConfigError(
            f"model.prefix_min={prefix_min} and model.prefix_max={prefix_max} hold no whole number of tokens of a "
            f"block of {block_len} (data.seq_len): {prefix_min * block_len:g} to {prefix_max * block_len:g}; "
            "widen the range"
        )
    return lo, hi


@dataclass
class PrefixBatches(PackedCausalBatches):
    """Packed blocks as for causal LM (with document masks when asked), plus `prefix_len` (batch,) per example and
    the prefix targets ignored."""

    prefix_min: float = 0.25
    prefix_max: float = 0.75

    def __post_init__(self) -> None:
        self.bounds = prefix_bounds(self.prefix_min, self.prefix_max, self.block_len)

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        batch = super().__call__(blocks, rng)
        rng = rng if rng is not None else np.random.default_rng(0)
        lo, hi = self.bounds
        prefix_len = torch.from_numpy(rng.integers(lo, hi + 1, size=len(blocks))).long()
        in_prefix = torch.arange(self.block_len)[None, :] < prefix_len[:, None]
        batch["labels"][in_prefix] = IGNORE_INDEX  # label t is predicted at t-1: inside the prefix, seen already
        batch["prefix_len"] = prefix_len
        return batch


class PrefixLM(CausalLM):
    name = "prefix_lm"

    def __init__(self, net, optimizer, scheduler=None, prefix_min: float = 0.25, prefix_max: float = 0.75, **kwargs):
        super().__init__(net, optimizer, scheduler, **kwargs)
        prefix_bounds(prefix_min, prefix_max, net.max_seq_len)  # a bad range stops before the data is read
        self.prefix_min, self.prefix_max = prefix_min, prefix_max

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> PrefixBatches:
        return PrefixBatches(seq_len, special_ids.get("eos"), prefix_min=self.prefix_min, prefix_max=self.prefix_max)

    # generate() and sample_texts() continue a prompt read bidirectionally as the prefix
    decode = staticmethod(generation.sample_after_prefix)
