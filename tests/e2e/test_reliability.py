"""Never lose a run: last.ckpt on a step clock, signals stop with a checkpoint and a non-zero status, saves are
atomic, and a wrong ckpt_path is one message before compute. Real `python train.py` subprocesses, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_dir_from_output, run_train

CLOCK = ["callbacks.model_checkpoint.every_n_steps=5", "callbacks.model_checkpoint.keep_last=2"]


def data(corpus: Path) -> list[str]:
    return ["data=text", f"data.path={corpus}", "logger=csv"]


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]


@pytest.fixture(scope="module")
def clocked_run(text_corpus):
    proc = run_train([*TINY, *data(text_corpus), *CLOCK, "trainer.max_steps=23"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every save says what it keeps: no Lightning notice per checkpoint in the user's console
    assert "weights_only" not in proc.stdout + proc.stderr
    return run_dir_from_output(proc.stdout)


def test_last_checkpoint_is_the_newest_state_and_step_checkpoints_rotate(clocked_run):
    ckpts = clocked_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt", "step-20.ckpt", "step-23.ckpt"]
    assert step_of(ckpts / "last.ckpt") == 23  # the end of fit, not the last val/loss improvement
    assert os.path.samefile(ckpts / "last.ckpt", ckpts / "step-23.ckpt")  # one write, two names
    assert step_of(ckpts / "best.ckpt") in (10, 20)  # best.ckpt follows val/loss (validations at 10 and 20)


def test_resuming_a_finished_run_continues_from_its_real_last_step(clocked_run, text_corpus):
    proc = run_train(
        [*TINY, *data(text_corpus), *CLOCK, "trainer.max_steps=26", f"ckpt_path={clocked_run}/checkpoints/last.ckpt"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert s["steps"] == 26 and s["tokens"] == 26 * 8 * 32


def start_long_run(corpus: Path, run_dir: Path) -> subprocess.Popen:
    args = [*TINY, *data(corpus), *CLOCK, "trainer.max_steps=100000", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_training(proc: subprocess.Popen, run_dir: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not list((run_dir / "checkpoints").glob("step-*.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_a_signal_saves_at_the_next_step_and_exits_non_zero(signum, code, text_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_long_run(text_corpus, run_dir)
    wait_for_training(proc, run_dir)
    proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted"
    stop = s["interruption"]
    assert stop["signal"] == signal.Signals(signum).name and stop["exit_code"] == code
    assert stop["step"] == s["steps"] >= 5 and stop["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == s["steps"]  # saved at the signal's step
    assert "Traceback" not in out
    metrics = (run_dir / "csv" / "metrics.csv").read_text()  # the csv logger was finished, its rows flushed
    assert metrics.count("\n") > 1


def test_a_second_signal_exits_at_once_and_the_last_checkpoint_still_loads(text_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_long_run(text_corpus, run_dir)
    wait_for_training(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert step_of(run_dir / "checkpoints" / "last.ckpt") >= 5


SLOW_WRITER = """
import sys, time, torch
import lmforge.checkpoint_io as cio
from lightning.pytorch.plugins.io import TorchCheckpointIO

def slow_save(obj, f):  # what a large save looks like from outside: a file that grows for a long time
    f.write(b"PK\\x03\\x04 partial bytes of a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

torch.save = slow_save
io = cio.AtomicCheckpointIO() if sys.argv[2] == "atomic" else TorchCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, sys.argv[1])
"""


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    folder, elsewhere = tmp_path / "run" / "checkpoints", tmp_path / "other_tmp"
    folder.mkdir(parents=True)
    elsewhere.mkdir()
    last = folder / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, last)
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(last), "atomic"],
        env={**os.environ, "TMPDIR": str(elsewhere)},  # TMPDIR away from the run folder, as on many clusters
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.zeros(3))
    assert not list(elsewhere.iterdir())
    from lmforge.checkpoint_io import clean_orphans

    (orphan,) = [p for p in folder.iterdir() if p != last]  # the killed writer's temporary file, beside it
    assert clean_orphans(folder) == [orphan] and not orphan.exists()


# ---------------------------------------------------------------- checkpoint mistakes


@pytest.fixture(scope="module")
def bert_checkpoint(text_corpus):
    args = ["model=bert_tiny", "data.seq_len=32", "data.batch_size=8", *data(text_corpus), "trainer.max_steps=2"]
    proc = run_train([*args, "trainer.val_check_interval=2", "trainer.limit_val_batches=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir_from_output(proc.stdout) / "checkpoints" / "last.ckpt"


def mistakes(tmp: Path, good: Path, bert: Path) -> dict[str, tuple[Path, list[str], list[str]]]:
    not_ckpt = tmp / "a_folder"
    not_ckpt.mkdir()
    empty = tmp / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes(os.urandom(4096))
    return {
        "missing": (tmp / "nope.ckpt", [], ["no such file"]),
        "a folder that is not one": (not_ckpt, [], ["is a folder but not a checkpoint"]),
        "empty": (empty, [], ["is empty (0 bytes)"]),
        "truncated": (truncated, [], ["not a readable checkpoint"]),
        "corrupt": (corrupt, [], ["not a readable checkpoint"]),
        "another objective": (bert, [], ["holds a mlm checkpoint", "BERT", "this run's model is clm", "GPT"]),
        "another size": (good, ["model.net.n_layer=3"], ["model.net.n_layer=3 (the checkpoint has n_layer=2)"]),
    }


CASES = ["missing", "a folder that is not one", "empty", "truncated", "corrupt", "another objective", "another size"]


@pytest.mark.parametrize("case", CASES)
def test_a_checkpoint_mistake_is_one_message_before_compute(case, clocked_run, bert_checkpoint, text_corpus, tmp_path):
    good = clocked_run / "checkpoints" / "last.ckpt"
    path, overrides, expected = mistakes(tmp_path, good, bert_checkpoint)[case]
    before = {p: p.stat().st_mtime_ns for p in clocked_run.rglob("*") if p.is_file()}
    run_dir = tmp_path / "run"
    proc = run_train([*TINY, *data(text_corpus), *overrides, f"ckpt_path={path}", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and f"ckpt_path={str(path)!r}" in proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in: {proc.stderr[-800:]}"
    assert not (run_dir / "tokenizer.json").exists() and not (run_dir / "config.yaml").exists()  # before compute
    assert {p: p.stat().st_mtime_ns for p in clocked_run.rglob("*") if p.is_file()} == before
