"""The emissions report over a real 3-run `train.py -m` multirun."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, TINY, run_train

pytestmark = pytest.mark.slow


def test_report_over_a_three_run_multirun(text_corpus, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(
        [
            "-m",
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "logger=csv",
            "callbacks.emissions.measure_power_secs=1",
            f"hydra.sweep.dir={sweep_dir}",
            "model.optimizer.lr=1e-3,3e-3,1e-2",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").exists())
    assert len(runs) == 3
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    for s in summaries:
        assert s["status"] == "completed" and s["emissions"]["energy_kwh"] > 0
        assert s["emissions"]["estimate"]["flops"] > 0

    out = tmp_path / "report"
    rep = subprocess.run(
        [sys.executable, "-m", "lmforge.report", str(sweep_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report["sweeps"]) == 1
    sweep = report["sweeps"][0]
    assert len(sweep["runs"]) == 3
    total = sum(s["emissions"]["energy_kwh"] for s in summaries)
    assert sweep["totals"]["runs"] == 3
    assert sweep["totals"]["energy_kwh"] == pytest.approx(total, rel=1e-6)
    assert report["totals"]["energy_kwh"] == pytest.approx(total, rel=1e-6)
    assert len(list((out / "plots").glob("*.png"))) >= 3
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and (out / "report.md").exists()
