"""What a run shows people: the offline W&B run read back from its record log, throughput and MFU in
summary.json, CSV and TensorBoard beside W&B, the config tree, resume into the same W&B run, and a
multirun as one W&B group."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_dir_from_output, run_train
from wandb_records import read_records, read_run

from lmforge.flops import training_flops
from lmforge.models.gpt import GPT

STEPS, WARMUP, BATCH, SEQ = 20, 3, 8, 32
RUN_ARGS = [
    *TINY,
    "trainer.max_steps=20",
    "callbacks.throughput.warmup_steps=3",
    "callbacks.throughput.window=4",
    "logger.wandb.project=obs",
    "logger.wandb.tags=[tiny,test]",
    "logger.wandb.notes=read back",
    "logger.wandb.log_model=true",
]
DESIGN_METRICS = (
    "train/loss",
    "val/loss",
    "val/ppl",
    "lr",
    "grad_norm",
    "perf/tokens_per_sec",
    "perf/mfu",
    "perf/step_time_s",
)
PERF_METRICS = (
    "perf/samples_per_sec",
    "perf/flops_per_sec",
    "perf/memory_gb",
    "perf/device/tokens_per_sec",
    "perf/device/samples_per_sec",
    "perf/device/flops_per_sec",
)


@pytest.fixture(scope="module")
def first(text_corpus):
    proc = run_train([*RUN_ARGS, "data=text", f"data.path={text_corpus}", "logger=[wandb,csv,tensorboard]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    return run_dir, proc.stdout, offline, read_run(offline)


def test_wandb_run_settings(first):
    run_dir, _, _, wb = first
    assert wb.run.project == "obs" and wb.run.job_type == "clm"
    assert list(wb.run.tags) == ["tiny", "test"] and wb.run.notes == "read back"
    # named after the overrides that differ from the defaults; TINY's model.net sizes are gpt_tiny's own
    assert wb.run.display_name.startswith("model=gpt_tiny seq_len=32 batch_size=8")
    assert "project" not in wb.run.display_name and "logger" not in wb.run.display_name
    assert json.loads((run_dir / "wandb/run.json").read_text())["id"] == wb.run.run_id


def test_wandb_config_is_the_resolved_run_config(first):
    run_dir, _, _, wb = first
    assert wb.config["model"]["net"]["n_layer"] == 2 and wb.config["trainer"]["max_steps"] == STEPS
    assert wb.config["model"]["net"]["vocab_size"] % 64 == 0  # the run-time vocab size, resolved
    assert wb.config["data"]["seq_len"] == SEQ and wb.config["seed"] == 1337


def test_wandb_history_has_every_dashboard_metric(first):
    _, _, _, wb = first
    for key in (*DESIGN_METRICS, *PERF_METRICS, "trainer/global_step"):
        assert key in wb.history_keys, f"{key} never logged to W&B"
    mfu = [row["perf/mfu"] for row in wb.history if "perf/mfu" in row]
    assert mfu and all(0 < m < 1 for m in mfu)
    first_perf_step = min(row["trainer/global_step"] for row in wb.history if "perf/tokens_per_sec" in row)
    assert first_perf_step > WARMUP  # warm-up steps are never part of a rate
    # one row per logging step: the callbacks' figures share the row of Lightning's own metrics of that step
    train_rows = [row for row in wb.history if "train/loss" in row]
    perf_rows = [row for row in wb.history if "perf/tokens_per_sec" in row]
    assert perf_rows and all("train/loss" in row and "grad_norm" in row for row in perf_rows)
    steps = [row["trainer/global_step"] for row in train_rows]
    assert len(steps) == len(set(steps))


def test_wandb_summary_uses_min_loss_and_mean_perf(first):
    _, _, _, wb = first
    val = [row["val/loss"] for row in wb.history if "val/loss" in row]
    assert len(val) >= 2 and wb.summary["val/loss"] == {"min": pytest.approx(min(val))}
    tps = [row["perf/tokens_per_sec"] for row in wb.history if "perf/tokens_per_sec" in row]
    assert wb.summary["perf/tokens_per_sec"] == {"mean": pytest.approx(sum(tps) / len(tps), rel=1e-4)}
    assert set(wb.summary["perf/memory_gb"]) == {"max"}
    assert wb.summary["status"] == "completed" and wb.summary["steps"] == STEPS
    assert wb.exit_code == 0 and "summary.json" in wb.files


def test_wandb_samples_table_holds_every_validation(first):
    run_dir, _, offline, wb = first
    tables = [row for row in wb.history if row.get("samples/_type") == "table-file"]
    assert [t["trainer/global_step"] for t in tables] == [10, 20]  # one per validation in fit
    latest = json.loads((offline / "files" / tables[-1]["samples/path"]).read_text())
    assert latest["columns"] == ["step", "sample", "text"]
    assert [r[:2] for r in latest["data"]] == [[10, 1], [10, 2], [10, 3], [20, 1], [20, 2], [20, 3]]
    saved = (run_dir / "samples.txt").read_text()
    assert all(text in saved for _, _, text in latest["data"][3:])  # samples.txt holds the last ones


def test_checkpoints_become_wandb_model_artifacts(first):
    _, _, offline, wb = first
    records = read_records(next(offline.glob("*.wandb")))
    models = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert models and all(m.name == f"model-{wb.run.run_id}" for m in models)
    assert {"best", "latest"} <= {alias for m in models for alias in m.aliases}
    assert all([f.path for f in m.manifest.contents] == ["model.ckpt"] for m in models)


def test_offline_run_prints_its_sync_command(first):
    _, stdout, offline, _ = first
    assert f"wandb sync {offline}" in stdout


def test_config_tree_printed_at_start(first):
    _, stdout, _, _ = first
    assert re.search(r"^config\n├── data", stdout, re.M) and "n_layer: 2" in stdout


def test_summary_perf_has_throughput_and_mfu(first):
    run_dir, _, _, _ = first
    s = json.loads((run_dir / "summary.json").read_text())
    perf = s["perf"]
    assert perf["device_type"] == "cpu" and perf["peak_flops"] > 0 and perf["peak_flops_source"] == "lmforge.hardware"
    assert 0 < perf["mfu"] < 1
    assert perf["measured_steps"] == STEPS - WARMUP and perf["warmup_steps"] == WARMUP
    assert perf["step_time_s"] == pytest.approx(perf["measured_time_s"] / perf["measured_steps"])
    assert perf["tokens_per_sec"] == pytest.approx(BATCH * SEQ / perf["step_time_s"])
    assert perf["samples_per_sec"] == pytest.approx(BATCH / perf["step_time_s"])
    assert perf["memory_gb"] > 0
    cfg = json.loads(json.dumps(read_run(next((run_dir / "wandb").glob("offline-run-*"))).config["model"]["net"]))
    net = GPT(**{k: v for k, v in cfg.items() if k != "_target_"})
    assert perf["flops_per_step"] == training_flops(net, {"input_ids": torch.zeros(BATCH, SEQ, dtype=torch.long)})
    assert perf["mfu"] == pytest.approx(perf["flops_per_sec"] / perf["peak_flops"])
    assert not [k for k in s["metrics"] if k.startswith("perf/")]  # perf lives in its own section


def test_csv_and_tensorboard_beside_wandb(first):
    run_dir, _, _, _ = first
    with open(run_dir / "csv/metrics.csv") as f:
        header = next(csv.reader(f))
    for key in (*DESIGN_METRICS, *PERF_METRICS):
        assert key in header
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_the_same_wandb_run(first, text_corpus):
    run_dir, _, offline, wb = first
    proc = run_train(
        [
            *RUN_ARGS,
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=24",
            f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_dir = run_dir_from_output(proc.stdout)
    (resumed_offline,) = (resumed_dir / "wandb").glob("offline-run-*")
    resumed = read_run(resumed_offline)
    assert resumed.run.run_id == wb.run.run_id and resumed.run.display_name == wb.run.display_name
    assert max(row.get("trainer/global_step", 0) for row in resumed.history) == 24
    # both halves are uploaded, in order, into the one run
    assert f"wandb sync {offline} {resumed_offline}" in proc.stdout


@pytest.mark.slow
def test_multirun_is_one_wandb_group_of_separate_runs(text_corpus):
    proc = run_train(
        [
            "-m",
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "callbacks.throughput.warmup_steps=1",
            "callbacks.throughput.window=2",
            "model.optimizer.lr=1e-3,2e-3",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_dirs = [Path(line.split(": ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("Run folder")]
    assert len(job_dirs) == 2
    runs = [read_run(next((d / "wandb").glob("offline-run-*"))) for d in job_dirs]
    assert runs[0].run.run_id != runs[1].run.run_id
    assert runs[0].run.run_group == runs[1].run.run_group == job_dirs[0].parent.name
    assert "lr=0.001" in runs[0].run.display_name  # as Hydra writes a swept value
    assert "lr=" not in runs[1].run.display_name  # 2e-3 is the default
    assert all(r.exit_code == 0 for r in runs)


@pytest.mark.slow
def test_wandb_online_without_network_falls_back_to_offline(text_corpus, monkeypatch):
    # An API key and a W&B server that refuses connections: the online start gives up after init_timeout and the
    # run logs offline in its folder instead of failing (issue 17: a tracker never stops training).
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    proc = run_train(
        [
            *TINY,
            "trainer.max_steps=4",
            "data=text",
            f"data.path={text_corpus}",
            "logger.wandb.mode=online",
            "logger.wandb.init_timeout=3",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B could not start an online run" in proc.stdout and "logging offline" in proc.stdout
    run_dir = run_dir_from_output(proc.stdout)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert json.loads((run_dir / "wandb/run.json").read_text())["mode"] == "offline"
    assert f"wandb sync {offline}" in proc.stdout


def test_no_step_between_logging_steps_reads_a_value_off_the_device(text_corpus, tmp_path, monkeypatch):
    """On a GPU every `.item()`, `float(t)`, `bool(t)` of a device tensor waits for the device. The default run
    (its callbacks: throughput, progress bar, samples, emissions, checkpoints; W&B and CSV loggers) reads values only
    in the logging steps; counted on CPU, where the same calls happen (tests/e2e/count_host_reads.py)."""
    reads = tmp_path / "reads.json"
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=30",
            "trainer.log_every_n_steps=5",
            "trainer.val_check_interval=30",
            "+callbacks.count_host_reads._target_=count_host_reads.HostReads",
            f"+callbacks.count_host_reads.out={reads}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counted = json.loads(reads.read_text())
    per_step = {int(k): v for k, v in counted["per_step"].items()}
    assert sorted(per_step) == list(range(1, 31))
    syncing = {step: counted["sites"][str(step)] for step, n in per_step.items() if n and step % 5}
    assert not syncing, f"host reads outside the logging steps: {syncing}"
    assert all(per_step[step] > 0 for step in (5, 10, 15, 20, 25))  # the counter sees the reads that are there
