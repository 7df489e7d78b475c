"""The forecast printed before a run starts: FLOPs, device-hours, energy and CO2e of the configured run."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lmforge.console import say
from lmforge.emissions.estimate import EstimateError, estimate_for_run, format_estimate


def planned_tokens(cfg: DictConfig, trainer: L.Trainer) -> int:
    """Tokens the run will consume: steps x micro batch x seq_len x accumulation x data-parallel ranks."""
    accumulate = cfg.trainer.get("accumulate_grad_batches") or 1
    per_step = cfg.data.batch_size * cfg.data.seq_len * accumulate * trainer.world_size
    return max(0, trainer.max_steps) * per_step


def pre_run_estimate(cfg: DictConfig, params: int, trainer: L.Trainer, callbacks: list) -> dict[str, Any] | None:
    """Print the estimate (global rank 0) and hand it to the emissions callback for summary.json."""
    tracker = next((c for c in callbacks if getattr(c, "summary_key", None) == "emissions"), None)
    net = cfg.model.net
    kwargs = {}
    if tracker is not None:
        kwargs = dict(country_iso_code=tracker.country_iso_code, region=tracker.region, pue=tracker.pue,
                      intensity=tracker.intensity)
    try:
        est = estimate_for_run(
            params, planned_tokens(cfg, trainer), count=trainer.world_size, dtype=str(trainer.precision),
            n_layer=OmegaConf.select(net, "n_layer"), d_model=OmegaConf.select(net, "d_model"),
            seq_len=cfg.data.seq_len, **kwargs)
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
