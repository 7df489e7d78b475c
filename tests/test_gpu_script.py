"""bench/gpu.sh, the one script a lent GPU runs (issue 18), in its CPU smoke mode: every step runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_script_smoke_mode_runs_every_step(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    assert [r["compile"] for r in report["raw_loop"]["results"]] == [False, "blocks"]
    assert report["train"]["steps"] == 12 and report["train"]["tokens_per_sec"] > 0
    assert report["train"]["mfu"] > 0 and report["train_mfu_over_raw_loop_mfu"] > 0
    assert report["fsdp"]["steps"] == 8 and report["fsdp"]["val_loss"] is not None
