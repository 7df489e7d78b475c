"""Optuna pruning for a trial that runs as its own `python train.py` process (launched by sweep.py).

The sweep process owns the Optuna study (sqlite in the sweep folder) and writes `optuna_trial.json`
into the trial's run folder before launching it; this callback reads it, reports the monitored
metric at each validation to that trial, and stops training when the pruner says so. The run then
ends normally — checkpoints and summary.json are written — with status "pruned".

Why not optuna-integration's PyTorchLightningPruningCallback: it needs the Trial object in the same
process and raises TrialPruned out of `trainer.fit`, which would end the run as an exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lmforge.console import say

TRIAL_FILE = "optuna_trial.json"
SQLITE_TIMEOUT_S = 60  # trials and the sweep share one sqlite file; wait for its lock rather than fail


def make_pruner(settings: dict[str, Any] | None):
    """An Optuna pruner from `sweep.pruner` settings ({"name": "median" | "hyperband" | "none", ...})."""
    import optuna

    p = settings or {}
    if p.get("name") == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(p.get("n_startup_trials", 5)), n_warmup_steps=int(p.get("n_warmup_steps", 0))
        )
    if p.get("name") == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(p.get("min_resource", 1)), reduction_factor=int(p.get("reduction_factor", 3))
        )
    return optuna.pruners.NopPruner()


def connect_trial(storage_url: str, study_name: str, trial_number: int, pruner: dict[str, Any] | None = None):
    """The Optuna Trial of `study_name` numbered `trial_number`, attached from another process. The pruner
    is not stored in the study, so the sweep passes its settings along."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), trial_number)
    # The constructor is the documented way to rebuild a Trial from its id (Optuna's own distributed
    # helpers do the same); ask() would create a new trial instead.
    return optuna.trial.Trial(study, trial_id)


class OptunaPruning(L.Callback):
    """Report `monitor` at every validation during fit; stop the run when the trial should be pruned."""

    summary_key = "optuna"

    def __init__(self, run_dir: str | None = None, monitor: str | None = None):
        self.run_dir = run_dir  # default: trainer.default_root_dir, which lmforge sets to the run folder
        self.monitor = monitor
        self.trial = None
        self.info: dict[str, Any] = {}
        self.pruned_at_step: int | None = None
        self.final_status: str | None = None  # read by lmforge.train: the run's summary status

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.trial is not None or not trainer.is_global_zero:
            return
        self.trial_file = Path(self.run_dir or trainer.default_root_dir) / TRIAL_FILE
        if not self.trial_file.exists():
            rank_zero_warn(
                f"callbacks.optuna_pruning: no {self.trial_file} (sweep.py writes it for each trial); "
                "this run is not pruned."
            )
            return
        self.info = json.loads(self.trial_file.read_text())
        self.monitor = self.monitor or self.info.get("monitor", "val/loss")
        self.trial = connect_trial(
            self.info["storage"], self.info["study_name"], int(self.info["trial_number"]), self.info.get("pruner")
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.trial.report(float(value), step=trainer.global_step)
                prune = self.trial.should_prune()
        prune = trainer.strategy.broadcast(prune, src=0)  # every rank stops at the same step
        if prune:
            self.pruned_at_step = trainer.global_step
            self.final_status = "pruned"
            trainer.should_stop = True
            if trainer.is_global_zero:
                value = float(trainer.callback_metrics[str(self.monitor)])
                say(
                    f"\nPruned by the sweep at step {trainer.global_step}: {self.monitor}={value:.4f} is behind the "
                    "other trials."
                )

    def summary(self) -> dict[str, Any]:
        if not self.info:
            return {}
        return {
            "study": self.info.get("study_name"),
            "trial": self.info.get("trial_number"),
            "monitor": self.monitor,
            "pruned_at_step": self.pruned_at_step,
        }
