"""What every model family's net has in common (the `Net` contract of lmforge/protocols.py), written once.

A family subclasses `FamilyNet`, keeps its dataclass in `self.config`, and supplies what is its own: the
layers, `init_weights`, `forward` and `forward_flops` (checked against the `Net` protocol by mypy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


class FamilyNet(nn.Module):
    """Base of GPT, BERT and T5: config access, the blocks lmforge.parallel works on, parameter counts."""

    config: Any  # the family's config dataclass; `type(net)(**net.config_dict())` rebuilds the net

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in order: the units lmforge.parallel shards, checkpoints and compiles."""
        blocks = self.blocks
        assert isinstance(blocks, nn.ModuleList), f"{type(self).__name__}.blocks must be a ModuleList"
        return [b for b in blocks if b is not None]  # a pipeline stage holds only its own (the others are None)

    def position_parameters(self) -> list[nn.Parameter]:
        """The tables `num_parameters(exclude_embeddings=True)` leaves out: positions (and token types). The
        word embeddings stay in: they are the (tied) output layer too."""
        return []

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.position_parameters())
        return n


@dataclass(frozen=True)
class PipelinePlan:
    """How a family's net splits into pipeline stages (lmforge.parallel.pipeline): the net's modules only the first
    stage holds (embeddings) and only the last (final norm, LM head), by attribute name; `blocks` is split between
    the stages in order. The family's `pipeline_forward(x)` runs whatever part of the net a stage holds."""

    first: tuple[str, ...]
    last: tuple[str, ...]
    blocks: str = "blocks"


def check_heads_divide(d_model: int, n_head: int) -> None:
    """For configs that split d_model into n_head heads (GPT, BERT; T5 sizes its heads with d_kv)."""
    if d_model % n_head:
        raise ValueError(
            f"model.net.d_model={d_model} is not divisible by model.net.n_head={n_head}; "
            "choose d_model as a multiple of n_head"
        )


@torch.no_grad()
def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2's and BERT's init, for `net.apply`: N(0, std) Linear and Embedding weights, zero biases, unit
    LayerNorms (the constructor's values, restated so that a net built on the meta device gets them too)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
