"""Logger factories: W&B (offline unless an API key is configured), and the end-of-run hand-off.

A W&B run made here is one a dashboard can use as is: named after the overrides that differ
from the defaults, grouped by multirun/sweep, typed by objective, with `val/loss` summarised
as its minimum and `perf/*` as their mean, the same run id when a run is resumed, and the
`wandb sync` command printed at the end of an offline run.
"""

from __future__ import annotations

import json
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from lmforge.console import say
from lmforge.errors import ConfigError
from lmforge.perf import PERF_METRICS
from lmforge.run_naming import multirun_group, run_name

WANDB_MODES = ("auto", "online", "offline", "disabled")
RUN_FILE = "run.json"  # <run dir>/wandb/run.json: the W&B run id, so a resumed run continues it
STEP_METRIC = "trainer/global_step"  # Lightning's x-axis for every metric
# How a run's summary shows each metric: the best validation loss, the mean throughput. Named one by
# one: W&B applies the first matching glob, and Lightning's "*" (the step axis) comes first.
METRIC_SUMMARIES = {"val/loss": "min", "val/ppl": "min", **PERF_METRICS}


def wandb_api_key_configured() -> bool:
    """True when W&B could log online without prompting: WANDB_API_KEY or a `wandb login` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _is_offline(run) -> bool:
    return bool(getattr(run, "offline", False) or run.settings.mode == "offline")


def previous_run(ckpt_path: str | None) -> dict[str, Any] | None:
    """The W&B run of the run folder a checkpoint lives in (`<run>/checkpoints/x.ckpt` or `<run>/x.ckpt`)."""
    if not ckpt_path:
        return None
    ckpt = Path(ckpt_path)
    for folder in (ckpt.parent.parent, ckpt.parent):
        f = folder / "wandb" / RUN_FILE
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                return None
    return None


class RunLogger(WandbLogger):
    """Lightning's WandbLogger, plus metric summaries, a run id file, one history row per step, and a clean
    finish."""

    def __init__(self, *, previous: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb, which warns when it is passed at all
        self._previous = previous
        self._prepared = False
        self._row: dict[str, Any] = {}  # the figures of step `_row_step` not yet written
        self._row_step: int | None = None

    # -- one history row per step: the callbacks' figures (throughput, energy: lmforge/log_steps.write_metrics)
    # arrive before Lightning's own metrics of the same step, each a call to `wandb.log`, which costs about a
    # millisecond of Python and adds a row. They are gathered here and written as one row when Lightning saves
    # the logger, which it does right after writing its own metrics (its logger connector) --
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._row and step != self._row_step:
            self._write_row()
        self._row.update(metrics)
        self._row_step = step

    def _write_row(self) -> None:
        row, self._row = self._row, {}
        if row:
            super().log_metrics(row, step=self._row_step)

    @rank_zero_only
    def save(self) -> None:
        self._write_row()
        super().save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._write_row()
        super().finalize(status)

    @property
    @rank_zero_experiment
    def experiment(self):
        run = self._start_run()
        if not self._prepared and hasattr(run, "define_metric") and not getattr(run, "disabled", False):
            self._prepared = True
            for name, how in METRIC_SUMMARIES.items():
                run.define_metric(name, step_metric=STEP_METRIC, summary=how)
            self._write_run_file(run)
        return run

    def _start_run(self):
        """The W&B run; an online start that fails (no network, the server down, a bad key) after
        `init_timeout` seconds becomes an offline run in the run folder: the tracker never stops training."""
        import wandb

        try:
            return super().experiment
        except wandb.errors.Error as e:
            if self._wandb_init.get("mode") != "online":
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            say(
                f"W&B could not start an online run ({reason}); logging offline in the run folder instead "
                "(the `wandb sync` command that uploads it is printed at the end)."
            )
            self._experiment = None
            self._wandb_init["mode"] = "offline"
            return super().experiment

    def _write_run_file(self, run) -> None:
        offline_dirs = list((self._previous or {}).get("offline_dirs", []))
        if _is_offline(run):
            offline_dirs.append(str(Path(run.dir).parent))  # .../wandb/offline-run-<time>-<id>
        info = {
            "id": run.id,
            "project": run.project,
            "entity": run.entity or None,
            "name": run.name,
            "group": run.group or None,
            "url": None if _is_offline(run) else getattr(run, "url", None),
            "mode": "offline" if _is_offline(run) else "online",
            "offline_dirs": offline_dirs,
        }
        path = Path(str(self.save_dir)) / "wandb" / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2) + "\n")

    @rank_zero_only
    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        """End the W&B run (several runs in one process — multiruns, sweeps — must not share one),
        with the headline numbers and summary.json attached; print how to upload an offline run."""
        self._write_row()
        run = self._experiment
        if run is None or not hasattr(run, "finish"):
            return
        if getattr(run, "disabled", False):
            run.finish()
            self._experiment = None
            return
        run.summary.update(
            {
                k: summary[k]
                for k in ("status", "params", "steps", "tokens", "wall_time_s")
                if summary.get(k) is not None
            }
        )
        if (run_dir / "summary.json").is_file():
            run.save(str(run_dir / "summary.json"), base_path=str(run_dir), policy="now")
        offline = _is_offline(run)
        exit_code = {"completed": 0, "pruned": 0, "interrupted": 130}.get(str(summary.get("status")), 1)
        run.finish(exit_code=exit_code)
        self._experiment = None
        if offline:
            info = json.loads((Path(str(self.save_dir)) / "wandb" / RUN_FILE).read_text())
            say(f"W&B offline run {info['id']}; upload it with:\n  wandb sync {' '.join(info['offline_dirs'])}")


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; a run that continues in its folder
    (resume=auto, ckpt_path) appends to it instead, so the file keeps the whole history (steps redone after a
    crash appear twice, once per session: what was computed)."""

    def __init__(self, log_dir: str) -> None:
        self._keep = Path(log_dir, self.NAME_METRICS_FILE)
        super().__init__(log_dir)
        if self._keep.is_file():
            with self._keep.open(newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = sorted(k for k in header.split(",") if k)

    def _check_log_dir_exists(self) -> None:
        pass  # keep the earlier sessions' rows


class RunCSVLogger(CSVLogger):
    """CSVLogger with `AppendingWriter`: <run dir>/csv/metrics.csv across every session of a run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if not isinstance(self._experiment, AppendingWriter):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def finish_loggers(loggers: list, summary: dict[str, Any], run_dir: str | Path) -> None:
    """Called once at the end of lmforge.train.run, after summary.json is written."""
    for lg in loggers:
        if isinstance(lg, RunLogger):
            lg.finish(summary, Path(run_dir))


def wandb_logger(
    save_dir: str,
    project: str = "lmforge",
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    resume_from: str | None = None,
    init_timeout: float = 30.0,
    **kwargs,
) -> RunLogger:
    """A W&B logger writing its run into the run folder (`save_dir/wandb`).

    mode=auto: online when an API key is configured, otherwise offline (no prompt, no network).
    name=None: the resumed run's name, else the command-line overrides that differ from the defaults.
    group=None: WANDB_RUN_GROUP,
    else the multirun's name. resume_from: the checkpoint being resumed; its run folder's W&B run
    id is reused, so the resumed run continues the same W&B run. init_timeout: seconds an online start may
    take before the run logs offline instead (wandb's own default is 90). Other keys go to `wandb.init`
    (entity, tags, notes, job_type, id, ...) or WandbLogger (log_model, checkpoint_name, ...).
    """
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}: choose one of {', '.join(WANDB_MODES)}.")
    if mode == "auto":
        mode = "online" if wandb_api_key_configured() else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")  # keep the console for our own messages
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    import wandb

    if wandb.run is not None:  # a run left open by an earlier job in this process: never log into it
        wandb.finish()
    previous = previous_run(resume_from)
    if previous and not kwargs.get("id"):
        kwargs["id"] = previous["id"]
    group = group or os.environ.get("WANDB_RUN_GROUP") or multirun_group()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kwargs.get("tags") is not None:
        kwargs["tags"] = list(kwargs["tags"])
    name = name or (previous or {}).get("name") or run_name()  # a resumed run keeps its name
    kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout))
    return RunLogger(previous=previous, save_dir=save_dir, project=project, mode=mode, name=name, group=group, **kwargs)
