"""`python train.py` end to end as a subprocess, on a tiny model: run folder, summary, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_dir_from_output, run_train, some_slow


@pytest.fixture(scope="module")
def first_run(text_corpus):
    proc = run_train([*TINY, "data=text", f"data.path={text_corpus}", "trainer.max_steps=20", "logger=csv"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir_from_output(proc.stdout), proc


def test_run_folder_has_everything(first_run):
    run_dir, proc = first_run
    for name in (
        "summary.json",
        "config.yaml",
        "tokenizer.json",
        "samples.txt",
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "csv/metrics.csv",
        "train.log",
    ):
        assert (run_dir / name).exists(), f"{name} missing from the run folder"
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["objective"] == "clm" and s["model"] == "gpt_tiny"
    assert s["steps"] == 20
    assert s["tokens"] == 20 * 8 * 32  # steps x batch x seq_len
    assert s["params"] > 0 and s["wall_time_s"] > 0
    for key in ("train/loss", "val/loss", "val/ppl"):
        assert key in s["metrics"]
    assert s["baseline"]["unigram_val_loss"] > 0
    assert "model=gpt_tiny" in s["overrides"]
    assert "Run folder" in proc.stdout and "summary.json" in proc.stdout
    log = (run_dir / "train.log").read_text()  # what the user was told stays in the run folder
    assert "Run folder (completed)" in log and "the unigram baseline" in log and "parameters: wte" in log
    # torch's threads, chosen by threads=auto and said in the header (lmforge/threads.py)
    assert s["scale"]["threads"] >= 1 and s["scale"]["threads_reason"].startswith(("auto", "OMP_NUM_THREADS"))
    assert f"{s['scale']['threads']} thread(s) each" in log
    assert "LeafSpec" not in proc.stderr  # a library-to-library deprecation is not shown to users
    # the pre-run forecast counts the FLOPs the throughput callback then measured MFU over
    assert s["emissions"]["estimate"]["flops"] == pytest.approx(s["perf"]["flops_per_step"] * 20)
    header = (run_dir / "csv/metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss", "val/loss", "val/ppl", "lr", "grad_norm"):
        assert key in header


def test_resume_continues_the_step_count(first_run, text_corpus):
    run_dir, _ = first_run
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=30",
            "logger=csv",
            f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert s["steps"] == 30
    assert s["tokens"] == 30 * 8 * 32  # token count is restored from the checkpoint, not restarted
    # Energy: this run's own measurement, plus what the run had spent up to the checkpoint.
    first = json.loads((run_dir / "summary.json").read_text())["emissions"]
    e = s["emissions"]
    before = e["cumulative"]["before_resume"]
    assert before["step"] == 20 and before["runs"] == 1
    assert 0 < before["energy_kwh"] <= first["energy_kwh"]
    assert e["cumulative"]["energy_kwh"] == pytest.approx(before["energy_kwh"] + e["energy_kwh"])
    assert e["cumulative"]["co2_kg"] == pytest.approx(before["co2_kg"] + e["co2_kg"])
    assert e["cumulative"]["runs"] == 2


def test_default_logger_is_an_offline_wandb_run_in_the_run_folder(text_corpus):
    proc = run_train(
        [*TINY, "data=text", f"data.path={text_corpus}", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {run_dir / 'wandb'}"
    assert list(runs[0].glob("*.wandb")), "the offline run has no .wandb record log"


CONSOLE_SCRIPT = Path(sys.executable).with_name("lmforge-train")  # pyproject's [project.scripts], once installed


@pytest.mark.parametrize("entry", some_slow(["lmforge-train", "python -m lmforge.train"], fast={"lmforge-train"}))
def test_console_entry_points_find_the_config_from_any_folder(entry, tmp_path):
    if entry == "lmforge-train" and not CONSOLE_SCRIPT.exists():
        pytest.skip("lmforge is not installed here (pip install -e .)")
    command = [str(CONSOLE_SCRIPT)] if entry == "lmforge-train" else [sys.executable, "-m", "lmforge.train"]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    job = run("--cfg", "job", "model=gpt_tiny")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "task_name: train" in job.stdout and "lmforge.objectives.clm.CausalLM" in job.stdout
    hydra = run("--cfg", "hydra")
    assert hydra.returncode == 0 and "    name: train\n" in hydra.stdout  # the job's log file is train.log
