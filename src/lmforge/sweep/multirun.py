"""Hydra callback for `python train.py -m ...` (registered in conf/hydra/default.yaml).

- The W&B group of every job is the multirun: its folder name (`multiruns/<date>_<time>`), given to
  W&B through its WANDB_RUN_GROUP variable, which jobs inherit whatever the launcher (basic,
  joblib, submitit/SLURM). `logger.wandb.group=...` or a WANDB_RUN_GROUP already set wins.
- One W&B run per job: the basic launcher runs every job in one process, and Lightning's
  WandbLogger reuses a W&B run that is still open, so each job finishes its run when it ends.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def multirun_name(config: DictConfig) -> str:
    return Path(str(config.hydra.sweep.dir)).name


class MultirunCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.setdefault("WANDB_RUN_GROUP", multirun_name(config))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        wandb = sys.modules.get("wandb")  # only if the job used W&B
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()
