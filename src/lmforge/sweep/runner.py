"""`python sweep.py`: check the sweep, run what is left of it, write its summary and report."""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from lmforge.errors import ConfigError
from lmforge.summary import read_summary
from lmforge.sweep.launchers import LocalLauncher, make_launcher
from lmforge.sweep.spec import SweepSpec, build_spec, check_same_sweep
from lmforge.sweep.summary import SUMMARY_FILE, save_summary, write_sweep_files
from lmforge.sweep.trials import SweepInterrupted, TrialRunner

LOCK_FILE = ".sweep.lock"


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One sweep.py per sweep folder: a second one would run the same trials twice."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another sweep.py is running in {sweep_dir} (it holds {sweep_dir / LOCK_FILE}); "
                "wait for it, or give this sweep its own sweep.name."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def folder_records(spec: SweepSpec) -> list[dict[str, Any]]:
    """Trial records from the run folders alone (W&B agents' runs: W&B, not us, holds their state)."""
    keys = {p.key.lstrip("+") for p in spec.space}
    records = []
    dirs = sorted((d for d in spec.dir.glob("trial_*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for number, d in enumerate(dirs):
        try:
            s = read_summary(d)
        except (OSError, ValueError):
            s = {}
        parsed = OverridesParser.create().parse_overrides(s.get("overrides", []))
        mine = [o for o in parsed if o.key_or_group in keys]
        overrides = [o.input_line for o in mine]
        params = {o.key_or_group: o.value() for o in mine}
        state = s.get("status") or "running"
        records.append(
            {
                "number": number,
                "run_dir": d.name,
                "state": state,
                "overrides": overrides,
                "params": params,
                "retry_of": None,
                "error": s.get("error"),
            }
        )
    return records


def run_sweep(cfg: DictConfig, hydra_cfg: Any, train_script: Path) -> dict[str, Any]:
    spec = build_spec(cfg, hydra_cfg, train_script)
    with sweep_lock(spec.dir):
        check_same_sweep(spec)
        status = "completed"
        if spec.backend == "wandb":  # trials are the W&B agent's; sweep.py only runs the agent, here
            runner = TrialRunner(spec, LocalLauncher(1))
            from lmforge.sweep.wandb_sweep import run_wandb_sweep

            done = sum(r["state"] in ("completed", "pruned", "failed") for r in folder_records(spec))
            remaining = (spec.n_trials or 0) - done
            if not run_wandb_sweep(spec, runner, remaining):
                return {"status": "created", "dir": str(spec.dir)}
            records = folder_records(spec)
            status = "interrupted" if runner.stopping.is_set() else "completed"
        else:
            from lmforge.sweep.optuna_backend import run_study, trial_records

            runner = TrialRunner(spec, make_launcher(spec.launcher, spec.n_jobs, spec.dir))
            try:
                run_study(spec, runner)
            except SweepInterrupted:
                status = "interrupted"
            if runner.aborted:
                status = "failed"
            records = trial_records(spec)
        summary = write_sweep_files(spec, records, status, error=runner.aborted)
        if spec.report:
            from lmforge.sweep.report import write_report

            summary["report"] = str(write_report(spec, summary).relative_to(spec.dir))
            save_summary(spec, summary)
        _print_result(spec, summary)
        return summary


def _print_result(spec: SweepSpec, summary: dict[str, Any]) -> None:
    t = summary["totals"]
    counts = ", ".join(f"{t[s]} {s}" for s in ("completed", "pruned", "failed", "interrupted") if t[s])
    print(f"\nSweep '{spec.name}' {summary['status']}: {t['trials']} trials ({counts or 'none'}).")
    if t.get("co2_kg") is not None:
        print(
            f"Cost of the sweep: {t['energy_kwh']:.4g} kWh, {t['co2_kg']:.4g} kgCO2e "
            f"({t['trials_with_emissions']} of {t['trials']} trials measured)."
        )
    best = summary.get("best")
    if best:
        print(
            f"Best: trial {best['number']}, {spec.metric}={best['value']:.6g}: {' '.join(best['overrides'])}\n"
            f"  {best['command']}\n  {best['experiment_command']}"
        )
    if summary["status"] == "interrupted":
        print("Interrupted: re-run the same command to finish the sweep (finished trials are kept).")
    if summary["status"] == "failed":
        print(
            f"Stopped: {summary.get('error')}.\nFix it and re-run the command (the failed trials count "
            "against sweep.n_trials; a new sweep.name starts afresh)."
        )
    print(f"Sweep folder: {spec.dir}  ({SUMMARY_FILE}{', report/sweep.html' if summary.get('report') else ''})")
    sys.stdout.flush()
