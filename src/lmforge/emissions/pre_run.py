"""The forecast printed before a run starts: FLOPs, device-hours, energy and CO2e of the configured run."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmforge.callbacks.emissions import EmissionsCallback
from lmforge.console import say
from lmforge.emissions.estimate import EstimateError, estimate_for_run, format_estimate
from lmforge.flops import training_flops
from lmforge.parallel.tensor import data_parallel_size
from lmforge.protocols import BatchBuilder


def planned_micro_batches(cfg: DictConfig, trainer: L.Trainer) -> int:
    """Micro batches the run will process: steps x accumulation x data-parallel ranks."""
    accumulate = cfg.trainer.get("accumulate_grad_batches") or 1
    return max(0, trainer.max_steps) * accumulate * data_parallel_size(trainer)


def planned_tokens(cfg: DictConfig, trainer: L.Trainer) -> int:
    """Tokens the run will consume: micro batches x micro batch size x seq_len."""
    return planned_micro_batches(cfg, trainer) * cfg.data.batch_size * cfg.data.seq_len


def planned_flops(
    net: nn.Module, builder: BatchBuilder | None, cfg: DictConfig, trainer: L.Trainer, token_id: int
) -> float | None:
    """Training FLOPs of the run, counted by lmforge.flops (the count MFU uses) on one batch the objective's
    own builder makes: exact shapes for every family (T5's encoder and decoder lengths differ, BERT adds
    [CLS]/[SEP]), where 6 x params x tokens overestimates an encoder-decoder. None when there is no builder of
    stream blocks (`RunData.block_builder`: seq2seq pairs have none) or lmforge.flops does not know the family:
    the caller then falls back to 6ND."""
    if builder is None:
        return None
    block = np.full(builder.block_len, token_id, dtype=np.int64)
    with torch.random.fork_rng(devices=[]):  # a builder that draws from torch's RNG must not move training's
        batch = builder([block] * cfg.data.batch_size, np.random.default_rng(0))
    per_micro_batch = training_flops(net, batch)
    if not per_micro_batch:
        return None
    return float(per_micro_batch) * planned_micro_batches(cfg, trainer)


def pre_run_estimate(
    cfg: DictConfig, params: int, trainer: L.Trainer, callbacks: list, flops: float | None = None
) -> dict[str, Any] | None:
    """Print the estimate (global rank 0) and hand it to the emissions callback for summary.json."""
    tracker = next((c for c in callbacks if isinstance(c, EmissionsCallback)), None)
    net = cfg.model.net
    kwargs: dict[str, Any] = {}
    if tracker is not None:
        kwargs = dict(
            country_iso_code=tracker.country_iso_code,
            region=tracker.region,
            pue=tracker.pue,
            intensity=tracker.intensity,
        )
    try:
        est = estimate_for_run(
            params,
            planned_tokens(cfg, trainer),
            count=trainer.world_size,
            dtype=str(trainer.precision),
            n_layer=OmegaConf.select(net, "n_layer"),
            d_model=OmegaConf.select(net, "d_model"),
            seq_len=cfg.data.seq_len,
            flops=flops,
            **kwargs,
        )
    except (EstimateError, ValueError) as e:  # an estimate is advice: never block the run over it
        if trainer.is_global_zero:
            say(f"(no emissions estimate: {e})")
        return None
    result = est.to_dict()
    if tracker is not None:
        tracker.estimate = result
    if trainer.is_global_zero:
        say(format_estimate(est))
    return result
