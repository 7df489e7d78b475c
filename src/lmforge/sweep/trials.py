"""Run one trial as a normal lmforge run (`python train.py ...` into `<sweep dir>/trial_<n>`) and read
what happened from its summary.json. Shared by every backend."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.summary import read_summary
from lmforge.sweep.space import format_value
from lmforge.sweep.spec import SweepSpec

# Adds the pruning callback to a trial; it finds its Optuna trial in <run dir>/optuna_trial.json.
# The override is the same for every trial, so run labels and reports are not cluttered by it.
PRUNING_OVERRIDE = "+callbacks.optuna_pruning={_target_:lmforge.callbacks.pruning.OptunaPruning}"


log = logging.getLogger("lmforge.sweep")  # Hydra sends it to the console and <sweep dir>/sweep.log


class SweepInterrupted(Exception):
    """The sweep was asked to stop (Ctrl-C, SIGTERM); re-running the same command continues it."""


def trial_dir_name(number: int) -> str:
    return f"trial_{number}"


@dataclass
class Outcome:
    status: str  # completed | pruned | interrupted | failed
    value: float | None
    message: str = ""


class TrialRunner:
    def __init__(self, spec: SweepSpec, launcher: Any):
        self.spec = spec
        self.launcher = launcher
        self.stopping = threading.Event()
        self.aborted: str | None = None  # why the sweep gave up (every trial failing), if it did

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("WANDB_RUN_GROUP", self.spec.name)  # the W&B group of every trial is the sweep
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def say(self, text: str) -> None:
        log.info(text)

    def run(self, number: int, overrides: list[str], extra: Sequence[str] = ()) -> Outcome:
        run_dir = self.spec.dir / trial_dir_name(number)
        if self.spec.n_jobs > 1 and self.spec.launcher.get("name", "local") == "local":
            extra = [*extra, *self.spec.concurrent_overrides]
        cmd = [
            sys.executable,
            *self.spec.train_command(overrides)[1:],
            *extra,
            f"hydra.run.dir={format_value(str(run_dir))}",
        ]
        self.say(f"[trial {number}] {' '.join(overrides)}")
        started = time.time()
        rc = self.launcher.run(cmd, run_dir, self.env())
        outcome = self.read_outcome(run_dir, rc)
        if self.stopping.is_set() and outcome.status == "failed":
            outcome = Outcome("interrupted", None, "stopped with the sweep")
        value = f" {self.spec.metric}={outcome.value:.4f}" if outcome.value is not None else ""
        note = f" ({outcome.message})" if outcome.message else ""
        self.say(f"[trial {number}] {outcome.status}{value} in {time.time() - started:.0f}s{note}")
        return outcome

    def read_outcome(self, run_dir: Path, rc: int) -> Outcome:
        try:
            summary = read_summary(run_dir)
        except (OSError, ValueError):
            return Outcome(
                "failed",
                None,
                f"exit status {rc}, no summary.json: {_last_line(run_dir / 'console.log')} "
                f"(see {run_dir / 'console.log'})",
            )
        status = summary.get("status")
        value = metric_value(summary, self.spec.metric)
        if status == "completed" and value is None:
            known = ", ".join(sorted(summary.get("metrics", {}))) or "none"
            return Outcome(
                "failed", None, f"summary.json has no metric '{self.spec.metric}' (sweep.metric); it has: {known}"
            )
        if status in ("completed", "pruned", "interrupted"):
            return Outcome(status, value)
        return Outcome("failed", None, summary.get("error") or f"exit status {rc}; see {run_dir / 'console.log'}")

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """Ctrl-C or SIGTERM: stop launching, stop running trials gracefully (they write summary.json)."""

        def handler(signum, frame):
            if not self.stopping.is_set():
                self.say(f"Stopping the sweep ({signal.Signals(signum).name}); re-run the same command to continue.")
            self.stopping.set()
            self.launcher.stop()

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _last_line(path: Path) -> str:
    """The last line a trial printed: for a config or data mistake, train.py's one-line `error: ...`."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def metric_value(summary: dict[str, Any], metric: str) -> float | None:
    v = summary.get("metrics", {}).get(metric)
    return float(v) if isinstance(v, (int, float)) else None
