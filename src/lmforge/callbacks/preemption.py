"""SIGTERM, SIGINT and SIGUSR1 stop training at the next optimizer step with a checkpoint, not a lost run.

What SLURM and Kubernetes send before killing a job is SIGTERM; SLURM's pre-timeout warning (`--signal`) is
SIGUSR1 by default; Ctrl-C is SIGINT. Lightning's own handling turns SIGTERM into a SystemExit with status 0 and
saves nothing, and Ctrl-C into status 1. This callback, which train.py always adds, replaces those handlers
while training runs:

  first signal   remembered; at the next step boundary (after an optimizer step, so never in the middle of
                 gradient accumulation) last.ckpt is written, training stops (no final validation), summary.json
                 says "interrupted" with that step, the loggers are finished, and the process exits with
                 EXIT_CODES[signal]: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1 (128 + the signal number,
                 as a shell reports a process killed by it)
  second signal  exits at once with the same status; checkpoint writes are atomic, so nothing is corrupted,
                 and the last complete checkpoint is the one resumed

With several processes every rank learns at the same step whether any rank was signalled (one all-reduce per
optimizer step, which Lightning's own SIGTERM broadcast already costs), so they stop and save together.
Under SLURM with Lightning's auto-requeue, Lightning keeps SIGUSR1 (it saves and requeues the job itself).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

from lmforge.console import say

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGUSR1: 138}


class Preemption(L.Callback):
    summary_key = "interruption"

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.final_status: str | None = None  # EndsRunOnPurpose: "interrupted" once it stopped the run
        self.checkpoint: Path | None = None
        self.step: int | None = None
        self._step_seen = -1
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.received] if self.received is not None else 0

    # -- handlers, installed once Lightning has installed its own (Trainer._run restores the earlier ones) --
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        env = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        for signum in EXIT_CODES:
            if signum == signal.SIGUSR1 and slurm_requeue:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now
            os._exit(EXIT_CODES[self.received])
        self.received = signal.Signals(signum)
        say(f"\n{self.received.name}: saving a checkpoint at the next step, then stopping (again: stop at once)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step == self._step_seen:  # inside gradient accumulation: not a step boundary
            return
        self._step_seen = trainer.global_step
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop and self.received is None:
                self.received = signal.SIGTERM  # another rank was signalled
        if not stop or self.final_status is not None:
            return
        from lmforge.callbacks.checkpoints import RunCheckpoints

        saver = next((cb for cb in trainer.callbacks if isinstance(cb, RunCheckpoints)), None)  # type: ignore[attr-defined]
        self.checkpoint = saver.save_latest(trainer) if saver is not None else None
        self.step = trainer.global_step
        self.final_status = "interrupted"
        trainer.should_stop = True

    def summary(self) -> dict[str, Any]:
        if self.received is None:
            return {}
        return {
            "signal": self.received.name,
            "step": self.step,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "exit_code": self.exit_code,
        }
