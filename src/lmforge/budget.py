"""Global batch and token budget: the two numbers that should not change when the world size does.

  data.batch_size      the micro batch: examples per device per forward/backward
  global_batch_size    examples per optimizer step, over all devices; when set, it decides
                       trainer.accumulate_grad_batches = global_batch_size / (data.batch_size x world size)
  max_tokens           a training budget in tokens; when set, it decides
                       trainer.max_steps = ceil(max_tokens / tokens per step)

Planned once, from the config and the world size, before the Trainer is built: the Trainer gets the final
accumulation and step budget as its arguments, and the run folder's config.yaml shows the values the run used;
summary.json gets them under "scale".
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, open_dict

from lmforge.errors import ConfigError
from lmforge.validate import positive


def _positive_int(cfg: DictConfig, key: str) -> int | None:
    return positive(key, cfg.get(key), integer=True, unset_hint=" (or null to leave it unset)")


def check_budget_config(cfg: DictConfig) -> None:
    """The user-typed keys alone, before any compute."""
    _positive_int(cfg, "global_batch_size")
    _positive_int(cfg, "max_tokens")


def plan_budget(cfg: DictConfig, world_size: int, block_len: int) -> dict[str, Any]:
    """Decide cfg.trainer.accumulate_grad_batches and cfg.trainer.max_steps from global_batch_size / max_tokens
    (written into cfg, which the Trainer is then built from); return the "scale" batch facts for summary.json.
    `block_len` is the corpus tokens one example uses."""
    world = int(world_size)
    micro = int(cfg.data.batch_size)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    global_batch = _positive_int(cfg, "global_batch_size")
    if global_batch is not None:
        per_pass = micro * world
        if global_batch % per_pass:
            lower, upper = global_batch // per_pass * per_pass, -(-global_batch // per_pass) * per_pass
            near = " or ".join(str(v) for v in (lower, upper) if v > 0)
            raise ConfigError(
                f"global_batch_size={global_batch} is not a multiple of data.batch_size x world size = {micro} x "
                f"{world} = {per_pass}, so no whole number of accumulation steps gives it. Choose "
                f"global_batch_size={near}, or change data.batch_size (the per-device micro batch)."
            )
        accumulate = global_batch // per_pass
    tokens_per_step = micro * world * accumulate * block_len
    max_tokens = _positive_int(cfg, "max_tokens")
    max_steps = cfg.trainer.get("max_steps")
    max_steps = -1 if max_steps is None else int(max_steps)  # -1: Lightning's "no step limit" (max_epochs decides)
    if max_tokens is not None:
        max_steps = math.ceil(max_tokens / tokens_per_step)
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulate
        cfg.trainer.max_steps = max_steps
    return {
        "world_size": world,
        "micro_batch_size": micro,
        "accumulate_grad_batches": accumulate,
        "global_batch_size": micro * world * accumulate,
        "tokens_per_step": tokens_per_step,
        "max_steps": max_steps,
        "max_tokens": max_tokens,
    }


def describe(scale: dict[str, Any]) -> str:
    if "data_parallel_size" in scale:  # tensor or pipeline parallel: the ranks of a group share each batch
        kind = "pipeline-parallel" if scale.get("mesh", {}).get("pp", 1) > 1 else "tensor-parallel"
        per = (
            f"{scale['micro_batch_size']} per replica x {scale['data_parallel_size']} data-parallel replica(s) of "
            f"{scale['world_size'] // scale['data_parallel_size']} {kind} devices"
        )
    else:
        per = f"{scale['micro_batch_size']} per device x {scale['world_size']} device(s)"
    text = (
        f"global batch {scale['global_batch_size']} = {per} x {scale['accumulate_grad_batches']} accumulation "
        f"step(s); {scale['tokens_per_step']:,} tokens per step"
    )
    if scale["max_tokens"] is not None:
        text += f"; max_tokens {scale['max_tokens']:,} -> {scale['max_steps']:,} steps"
    return text
