"""`python sweep.py` end to end: a 4-trial Optuna search over gpt_tiny runs, with median pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

MAX_STEPS = 6


def trial_args(corpus: Path, callbacks: str = "none") -> list[str]:
    """A tiny, fast trial: validation every 2 steps gives the pruner 3 reports."""
    return [
        "model=gpt_tiny",
        "data=text",
        f"data.path={corpus}",
        "data.seq_len=32",
        "data.batch_size=8",
        "trainer.limit_val_batches=1",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.val_check_interval=2",
        "logger=none",
        f"callbacks={callbacks}",
        "+trainer.enable_checkpointing=false",
    ]


def run_sweep(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "sweep.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


@pytest.fixture(scope="module")
def sweep(text_corpus, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweeps") / "lr"
    # gpt_lr's space; TPE's first samples are random (seed 0); one finished trial lets the median prune.
    args = [
        "hparams_search=gpt_lr",
        *trial_args(text_corpus, callbacks="emissions"),
        "sweep.n_trials=4",
        "sweep.pruner.n_startup_trials=1",
        f"sweep.dir={sweep_dir}",
    ]
    proc = run_sweep(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep_dir, args, proc


def run_summaries(sweep_dir: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "summary.json").read_text()) for d in sweep_dir.glob("trial_*")}


def test_four_trials_each_a_normal_run_folder(sweep):
    sweep_dir, _, proc = sweep
    s = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert s["status"] == "completed" and s["totals"]["trials"] == 4 and len(s["trials"]) == 4
    runs = run_summaries(sweep_dir)
    assert sorted(runs) == [f"trial_{i}" for i in range(4)]
    for t in s["trials"]:
        run = runs[t["run_dir"]]
        assert t["state"] == run["status"] and t["state"] in ("completed", "pruned")
        assert set(t["params"]) == {"model.optimizer.lr", "model.scheduler.warmup_steps"}
        assert 1e-4 <= t["params"]["model.optimizer.lr"] <= 1e-2
        for o in t["overrides"]:  # the trial ran with exactly the sampled values
            assert o in run["overrides"]
        assert "trainer.max_steps=6" in run["overrides"]  # the command line reaches every trial
        assert t["value"] == run["metrics"]["val/loss"] and t["steps"] == run["steps"]
    assert "Best: trial" in proc.stdout


def test_pruning_stops_a_trial_early(sweep):
    sweep_dir, _, _ = sweep
    s = json.loads((sweep_dir / "sweep_summary.json").read_text())
    pruned = [t for t in s["trials"] if t["state"] == "pruned"]
    assert pruned, f"no trial was pruned: {[(t['state'], t['value']) for t in s['trials']]}"
    for t in pruned:
        run = json.loads((sweep_dir / t["run_dir"] / "summary.json").read_text())
        assert run["status"] == "pruned" and run["steps"] < MAX_STEPS
        assert run["optuna"]["pruned_at_step"] == run["steps"]
    for t in s["trials"]:
        if t["state"] == "completed":
            assert t["steps"] == MAX_STEPS
    assert s["totals"]["pruned"] == len(pruned)


def test_best_is_the_minimum_over_the_completed_runs(sweep):
    sweep_dir, _, _ = sweep
    s = json.loads((sweep_dir / "sweep_summary.json").read_text())
    completed = {
        name: r["metrics"]["val/loss"] for name, r in run_summaries(sweep_dir).items() if r["status"] == "completed"
    }
    best_run = min(completed, key=completed.get)
    assert s["best"]["run_dir"] == best_run and s["best"]["value"] == completed[best_run]
    assert (sweep_dir / "best_command.sh").read_text().splitlines()[-1] == s["best"]["command"]
    for o in s["best"]["overrides"]:
        assert o in s["best"]["command"]
    experiment = (sweep_dir / s["best"]["experiment"]).read_text()
    assert experiment.startswith("# @package _global_")
    assert f"lr: {s['best']['params']['model.optimizer.lr']}" in experiment


def test_sweep_totals_add_up_every_trials_emissions(sweep):
    sweep_dir, _, _ = sweep
    s = json.loads((sweep_dir / "sweep_summary.json").read_text())
    runs = run_summaries(sweep_dir)
    assert s["totals"]["trials_with_emissions"] == 4  # pruned trials cost energy too
    for key in ("co2_kg", "energy_kwh"):
        assert s["totals"][key] == pytest.approx(sum(r["emissions"][key] for r in runs.values()))
        assert s["totals"][key] > 0
    for t in s["trials"]:
        assert t["emissions"]["co2_kg"] == runs[t["run_dir"]]["emissions"]["co2_kg"]


def test_sweep_report(sweep):
    sweep_dir, _, _ = sweep
    report = sweep_dir / "report"
    html = (report / "sweep.html").read_text()
    assert "Best trial" in html and "data:image/png;base64," in html
    assert (report / "plots" / "sweep_params.png").stat().st_size > 0
    assert (report / "plots" / "sweep_history.png").stat().st_size > 0
    # the emissions report (lmforge.report) over the same four run folders
    data = json.loads((report / "report.json").read_text())
    assert data["totals"]["runs"] == 4 and data["totals"]["missing_emissions"] == 0
    assert data["totals"]["co2_kg"] == pytest.approx(
        json.loads((sweep_dir / "sweep_summary.json").read_text())["totals"]["co2_kg"]
    )
    assert (report / "report.html").exists()


def test_rerunning_a_finished_sweep_runs_nothing(sweep):
    sweep_dir, args, _ = sweep
    before = {d.name: (d / "summary.json").stat().st_mtime for d in sweep_dir.glob("trial_*")}
    proc = run_sweep(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to run" in proc.stdout
    assert {d.name: (d / "summary.json").stat().st_mtime for d in sweep_dir.glob("trial_*")} == before

    other = run_sweep([a for a in args if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=8"])
    assert other.returncode == 2 and "holds a different sweep" in other.stderr
