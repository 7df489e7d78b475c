"""The forecast printed before a run starts: FLOPs, device-hours, energy and CO2e of the configured run."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmforge.console import say
from lmforge.emissions.estimate import EstimateError, estimate_for_run, format_estimate
from lmforge.flops import training_flops


def planned_micro_batches(cfg: DictConfig, trainer: L.Trainer) -> int:
    """Micro batches the run will process: steps x accumulation x data-parallel ranks."""
    accumulate = cfg.trainer.get("accumulate_grad_batches") or 1
    return max(0, trainer.max_steps) * accumulate * trainer.world_size


def planned_tokens(cfg: DictConfig, trainer: L.Trainer) -> int:
    """Tokens the run will consume: micro batches x micro batch size x seq_len."""
    return planned_micro_batches(cfg, trainer) * cfg.data.batch_size * cfg.data.seq_len


def planned_flops(net: nn.Module, builder: Any, cfg: DictConfig, trainer: L.Trainer, token_id: int) -> float | None:
    """Training FLOPs of the run, counted by lmforge.flops (the count MFU uses) on one batch the objective's
    own builder makes: exact shapes for every family (T5's encoder and decoder lengths differ, BERT adds
    [CLS]/[SEP]), where 6 x params x tokens overestimates an encoder-decoder. None when the builder does not
    make batches from stream blocks (seq2seq pairs) or the family is unknown: the caller falls back to 6ND."""
    block_len = int(getattr(builder, "block_len", 0) or 0)
    if block_len <= 0:
        return None
    try:
        with torch.random.fork_rng(devices=[]):  # builders may draw from the global RNG: leave training's untouched
            batch = builder([np.full(block_len, token_id, dtype=np.int64)] * cfg.data.batch_size)
        per_micro_batch = training_flops(net, batch)
    except Exception:  # an estimate is advice: any surprise here means "use the 6ND formula"
        return None
    if not per_micro_batch:
        return None
    return float(per_micro_batch) * planned_micro_batches(cfg, trainer)


def pre_run_estimate(
    cfg: DictConfig, params: int, trainer: L.Trainer, callbacks: list, flops: float | None = None
) -> dict[str, Any] | None:
    """Print the estimate (global rank 0) and hand it to the emissions callback for summary.json."""
    tracker = next((c for c in callbacks if getattr(c, "summary_key", None) == "emissions"), None)
    net = cfg.model.net
    kwargs = {}
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
