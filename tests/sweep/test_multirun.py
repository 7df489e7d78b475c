"""`python train.py -m`: a 2x2 grid with the basic launcher (one process) and with joblib (parallel);
every job is a normal run folder with its own W&B run, grouped under the multirun."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import run_train
from test_sweep import trial_args

pytestmark = pytest.mark.slow


def wandb_run_record(run_dir: Path):
    """The RunRecord of the offline W&B run in `run_dir` (group, job type, id), read from its .wandb file:
    a LevelDB-style log of protobuf records (wandb no longer ships a Python reader)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""  # 7-byte file header, 32 KiB blocks
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "run":
                return record.run
    raise AssertionError(f"no run record in {path}")


def test_2x2_grid_basic_launcher_one_wandb_run_per_job_grouped_by_the_multirun(text_corpus, tmp_path):
    multirun_dir = tmp_path / "mr"
    args = [a for a in trial_args(text_corpus) if not a.startswith("logger=")]  # the default logger: W&B offline
    proc = run_train(
        ["-m", *args, "model.optimizer.lr=1e-3,3e-3", "data.batch_size=4,8", f"hydra.sweep.dir={multirun_dir}"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(d for d in multirun_dir.iterdir() if d.is_dir())
    assert [d.name for d in jobs] == ["0", "1", "2", "3"]
    seen, run_ids = set(), set()
    for d in jobs:
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "completed" and s["steps"] == 6
        seen.add(
            (
                next(o for o in s["overrides"] if o.startswith("model.optimizer.lr=")),
                next(o for o in s["overrides"] if o.startswith("data.batch_size=")),
            )
        )
        run = wandb_run_record(d)
        assert run.run_group == multirun_dir.name and run.job_type == "clm"
        run_ids.add(run.run_id)
    assert len(seen) == 4 and len(run_ids) == 4


def test_joblib_launcher_runs_jobs_in_parallel_processes(text_corpus, tmp_path):
    multirun_dir = tmp_path / "mr"
    proc = run_train(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *trial_args(text_corpus),
            "model.optimizer.lr=1e-3,3e-3",
            f"hydra.sweep.dir={multirun_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((multirun_dir / n / "summary.json").read_text()) for n in ("0", "1")]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert {o for s in summaries for o in s["overrides"] if o.startswith("model.optimizer.lr=")} == {
        "model.optimizer.lr=0.001",
        "model.optimizer.lr=0.003",
    }
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
