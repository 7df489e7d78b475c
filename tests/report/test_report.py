"""The report over run and sweep folders. The 3-run multirun is made of real tiny Lightning
runs measured by the real EmissionsCallback; summary.json is written by hand per the contract
(train.py writes it in the end-to-end test)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lmforge.callbacks.emissions import EmissionsCallback
from lmforge.report import build_report
from lmforge.report.collect import read_codecarbon_csvs
from lmforge.report.plots import pareto_front

SRC = Path(__file__).resolve().parents[2] / "src"
LRS = (0.05, 0.01, 0.001)


class Tiny(L.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1))

    def training_step(self, batch, i):
        time.sleep(0.03)  # stretch the run past CodeCarbon's 1 s interval: a power curve, not a dot
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, i):
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _fake_run(run_dir: Path, lr: float) -> dict:
    """One real tiny run in a Hydra-shaped folder; returns the summary.json it wrote."""
    (run_dir / ".hydra").mkdir(parents=True)
    override = f"model.optimizer.lr={lr}"
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- model=tiny\n- {override}\n")
    (run_dir / ".hydra" / "config.yaml").write_text("model: {name: tiny}\n")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g)
    ds = TensorDataset(x, x.sum(1, keepdim=True))
    cb = EmissionsCallback(output_dir=run_dir, measure_power_secs=1, project_at=None)
    tr = L.Trainer(
        callbacks=[cb],
        max_steps=40,
        limit_val_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=run_dir,
    )
    model = Tiny(lr)
    tr.fit(model, DataLoader(ds, batch_size=32), DataLoader(ds, batch_size=128))
    val_loss = float(tr.callback_metrics["val/loss"])
    summary = {
        "status": "completed",
        "objective": "clm",
        "model": "tiny",
        "params": sum(p.numel() for p in model.parameters()),
        "steps": tr.global_step,
        "tokens": tr.global_step * 32 * 64,
        "wall_time_s": 2.0,
        "metrics": {"val/loss": val_loss, "val/ppl": math.exp(val_loss)},
        "emissions": cb.summary(),
        "overrides": ["model=tiny", override],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("multirun") / "2024-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - model=tiny\n    - model.optimizer.lr=" + ",".join(map(str, LRS)) + "\n"
    )
    home = os.environ.get("HOME")
    os.environ["HOME"] = str(root.parent)  # no ~/.codecarbon.config leaks in
    try:
        summaries = [_fake_run(root / str(i), lr) for i, lr in enumerate(LRS)]
    finally:
        os.environ["HOME"] = home or ""
    return root, summaries


def test_report_over_a_3_run_multirun(multirun, tmp_path):
    pytest.importorskip("matplotlib")
    root, summaries = multirun
    out = tmp_path / "report"
    data = build_report([root.parents[1]], out)  # the multirun/ root: finds <date>/<time>/<n>

    assert len(data["sweeps"]) == 1
    sweep = data["sweeps"][0]
    assert sweep["name"] == "multirun0/2024-01-01/12-00-00"
    assert [r["name"] for r in sweep["runs"]] == ["0", "1", "2"]
    assert sweep["sweep_overrides"] == ["model=tiny", "model.optimizer.lr=" + ",".join(map(str, LRS))]
    t = sweep["totals"]
    assert t["runs"] == 3 and t["missing_emissions"] == 0
    assert t["energy_kwh"] == pytest.approx(sum(s["emissions"]["energy_kwh"] for s in summaries))
    assert t["co2_kg"] == pytest.approx(sum(s["emissions"]["co2_kg"] for s in summaries))
    assert t["wall_time_s"] == pytest.approx(6.0)
    for r, s in zip(sweep["runs"], summaries):
        assert r["label"] == s["overrides"][1]  # only what differs between runs
        assert r["g_per_mtok"] == pytest.approx(s["emissions"]["co2_kg"] * 1e3 / (s["tokens"] / 1e6))
        assert r["method"] == s["emissions"]["method"] and not r["notes"]

    md = (out / "report.md").read_text()
    run_rows = [line for line in md.splitlines() if line.split(" | ")[0] in ("| 0", "| 1", "| 2")]
    assert len(run_rows) == 3
    assert "| **total** |" in md
    for kind in ("loss_vs_co2", "energy_per_token", "power"):
        png = out / "plots" / f"{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
        assert f"plots/{kind}.png" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and 'src="plots/' not in html  # self-contained


def test_missing_and_partial_data_are_marked_not_fatal(multirun, tmp_path):
    root, _ = multirun
    runs = tmp_path / "loose"
    # 1. a run that crashed before its summary: only CodeCarbon 2.x's CSV (older columns)
    old = runs / "old_csv"
    old.mkdir(parents=True)
    cols = [
        "timestamp",
        "project_name",
        "run_id",
        "duration",
        "emissions",
        "emissions_rate",
        "cpu_power",
        "gpu_power",
        "ram_power",
        "cpu_energy",
        "gpu_energy",
        "ram_energy",
        "country_iso_code",
        "pue",
    ]
    with open(old / "emissions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)  # no energy_consumed column: rebuilt from its parts
        w.writerow(
            [
                "2023-01-01T00:00:00",
                "p",
                "a",
                "10",
                "0.002",
                "0.0002",
                "30",
                "0",
                "10",
                "0.001",
                "0.002",
                "0.003",
                "USA",
                "1.0",
            ]
        )
    # 2. a failed run whose emissions section says partial
    failed = runs / "failed"
    failed.mkdir()
    (failed / "summary.json").write_text(
        json.dumps(
            {
                "status": "failed",
                "objective": "mlm",
                "model": "bert_tiny",
                "params": 1000,
                "tokens": 0,
                "wall_time_s": 1.0,
                "metrics": {},
                "emissions": {"status": "failed", "error": "tracker died"},
            }
        )
    )
    # 3. a run with a summary but no emissions at all
    bare = runs / "bare"
    bare.mkdir()
    (bare / "summary.json").write_text(json.dumps({"status": "completed", "model": "t5_tiny", "metrics": {}}))

    data = build_report([old, failed, bare, root], tmp_path / "rep", plots=False)
    loose = {r["name"]: r for r in data["sweeps"][0]["runs"]}
    assert loose["old_csv"]["energy_kwh"] == pytest.approx(0.006)
    assert any("emissions.csv only" in n for n in loose["old_csv"]["notes"])
    assert any("run failed" in n for n in loose["failed"]["notes"])
    assert any("emissions missing" in n for n in loose["bare"]["notes"])
    assert data["totals"]["runs"] == 6 and data["totals"]["missing_emissions"] == 2
    assert "⚠" in (tmp_path / "rep" / "report.md").read_text()


def test_codecarbon_csv_rows_of_one_run_are_cumulative(tmp_path):
    # flush() in append mode writes cumulative rows for one run_id: take the last, sum run_ids
    with open(tmp_path / "emissions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_id", "duration", "emissions", "energy_consumed", "water_consumed"])
        w.writerows([["a", "5", "0.1", "1.0", "0"], ["a", "10", "0.2", "2.0", "0"], ["b", "4", "0.05", "0.5", "0"]])
    tot = read_codecarbon_csvs(tmp_path)
    assert tot["energy_kwh"] == pytest.approx(2.5) and tot["co2_kg"] == pytest.approx(0.25)


def test_pareto_front():
    pts = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (0.5, 5.0)]
    assert pareto_front(pts) == [4, 0, 1, 3]


def test_cli_bad_paths_exit_2_with_a_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "lmforge.report", *args], capture_output=True, text=True, timeout=60, env=env
        )

    r = cli(str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli(str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no run folders" in r.stderr and "Traceback" not in r.stderr
