"""Stopping a sweep and running the same command again finishes it without repeating finished trials
(grid backend: every combination once, so a repeat would show)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from test_sweep import run_sweep, trial_args

pytestmark = pytest.mark.slow

LRS = {0.001, 0.003, 0.01}


def test_killed_sweep_resumes_where_it_stopped(text_corpus, tmp_path):
    sweep_dir = tmp_path / "grid"
    args = [
        "hparams_search=gpt_lr",
        *trial_args(text_corpus),
        "sweep.backend=grid",
        "sweep.n_trials=null",
        "sweep.pruner.name=none",
        "~sweep.params",
        "+sweep.params={model.optimizer.lr:'choice(1e-3, 3e-3, 1e-2)'}",
        f"sweep.dir={sweep_dir}",
    ]
    first = subprocess.Popen(
        [sys.executable, str(REPO / "sweep.py"), *args],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not ((sweep_dir / "trial_0" / "summary.json").exists() and (sweep_dir / "trial_1").exists()):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)  # while trial 1 runs
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 130, out[-3000:]
    s = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert s["status"] == "interrupted"
    assert [t["state"] for t in s["trials"]] == ["completed", "interrupted"]
    trial0 = (sweep_dir / "trial_0" / "summary.json").stat().st_mtime

    proc = run_sweep(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert s["status"] == "completed"
    done = [t for t in s["trials"] if t["state"] == "completed"]
    assert sorted(t["params"]["model.optimizer.lr"] for t in done) == sorted(LRS)  # each grid point exactly once
    assert (sweep_dir / "trial_0" / "summary.json").stat().st_mtime == trial0  # trial 0 was not run again
    interrupted = next(t for t in s["trials"] if t["state"] == "interrupted")
    retry = next(t for t in s["trials"] if t["retry_of"] == interrupted["number"])
    assert retry["state"] == "completed" and retry["params"] == interrupted["params"]
    assert len(s["trials"]) == 4 and s["totals"]["completed"] == 3
