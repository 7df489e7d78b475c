"""Never lose a run: last.ckpt on a step clock, signals stop with a checkpoint and a non-zero status, saves are
atomic, and a wrong ckpt_path is one message before compute. Real `python train.py` subprocesses, real signals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_dir_from_output, run_train, some_slow

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


@pytest.mark.parametrize(
    "signum,code",
    [
        (signal.SIGTERM, 143),
        pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
        pytest.param(signal.SIGUSR1, 138, marks=pytest.mark.slow),
    ],
)
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


def test_a_sharded_folder_set_aside_mid_swap_is_put_back_and_a_staged_one_dropped(tmp_path):
    """swap_in_folder renames the old best.ckpt aside before the new one takes its name: a kill between the two
    renames leaves best.ckpt.old-<N>, which the next run's setup puts back; a staged folder is incomplete."""
    from lmforge.checkpoint_io import clean_orphans, swap_in_folder

    def shard_folder(path: Path, step: int) -> Path:
        path.mkdir()
        (path / "__0_0.distcp").write_text(str(step))
        return path

    best = shard_folder(tmp_path / "best.ckpt", 10)
    swap_in_folder(shard_folder(tmp_path / "best.ckpt.staged-20", 20), best)
    assert (best / "__0_0.distcp").read_text() == "20" and sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]

    best.rename(tmp_path / "best.ckpt.old-20")  # killed after the first rename
    shard_folder(tmp_path / "best.ckpt.staged-30", 30)  # and while the next one was being written
    clean_orphans(tmp_path)
    assert (best / "__0_0.distcp").read_text() == "20" and sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]


@pytest.mark.slow
def test_fsdp_best_checkpoint_is_rewritten_by_a_swap_not_in_place(text_corpus):
    proc = run_train(
        [
            *TINY,
            *data(text_corpus),
            "trainer=fsdp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32-true",
            "trainer.val_check_interval=5",
            "trainer.max_steps=15",
            "callbacks.model_checkpoint.every_n_steps=null",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir_from_output(proc.stdout) / "checkpoints"
    # val/loss falls at each of the 3 validations here (and the final one): best.ckpt is rewritten each time
    val_losses = [float(r["val/loss"]) for r in metric_rows(folder.parent) if r.get("val/loss")]
    assert len(val_losses) >= 3 and val_losses[:3] == sorted(val_losses[:3], reverse=True)
    assert not [p.name for p in folder.iterdir() if ".staged-" in p.name or ".old-" in p.name]
    from lmforge.checkpoints import check_resume_checkpoint

    meta = torch.load(folder / "best.ckpt" / "meta.pt", map_location="cpu", weights_only=True)
    assert meta["global_step"] == 15  # the newest best, complete
    # a sharded folder tells its step and run config from meta.pt, as a file does (resume=auto picks by step)
    facts = check_resume_checkpoint(folder / "best.ckpt", "clm", meta["lmforge"]["config"]["model"]["net"])
    assert facts["step"] == 15 and facts["config"]["trainer"]["max_steps"] == 15


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
    newer = tmp / "newer.ckpt"
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    ckpt["lmforge"]["format"] += 1
    torch.save(ckpt, newer)
    return {
        "missing": (tmp / "nope.ckpt", [], ["no such file"]),
        "a folder that is not one": (not_ckpt, [], ["is a folder but not a checkpoint"]),
        "empty": (empty, [], ["is empty (0 bytes)"]),
        "truncated": (truncated, [], ["not a readable checkpoint"]),
        "corrupt": (corrupt, [], ["not a readable checkpoint"]),
        "another objective": (bert, [], ["holds a mlm checkpoint", "BERT", "this run's model is clm", "GPT"]),
        "another size": (good, ["model.net.n_layer=3"], ["model.net.n_layer=3 (the checkpoint has n_layer=2)"]),
        "a newer format": (newer, [], ["written by a newer lmforge", "Update lmforge"]),
    }


CASES = [
    "missing",
    "a folder that is not one",
    "empty",
    "truncated",
    "corrupt",
    "another objective",
    "another size",
    "a newer format",
]


@pytest.mark.parametrize("case", some_slow(CASES, fast={"truncated", "another objective", "a newer format"}))
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


# ------------------------------------------------------------------ resume=auto: the same command continues its run


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _has_row(run_dir: Path, step: int) -> bool:
    """Whether the CSV log holds train/loss of `step` yet (read while the run writes it)."""
    try:
        return any(r.get("step") == str(step) and r.get("train/loss") for r in metric_rows(run_dir))
    except (OSError, csv.Error):
        return False


def loss_curve(run_dir: Path) -> dict[int, str]:
    """step -> train/loss as written (a redone step keeps its last value: the session that went on from it)."""
    return {int(r["step"]): r["train/loss"] for r in metric_rows(run_dir) if r.get("train/loss")}


def test_the_same_command_in_a_fixed_folder_continues_its_run(text_corpus, tmp_path):
    run_dir = tmp_path / "fixed"
    args = [*TINY, *data(text_corpus), *CLOCK, "logger=[csv,wandb]", f"hydra.run.dir={run_dir}"]
    first = run_train([*args, "trainer.max_steps=10"])
    assert first.returncode == 0, first.stderr[-3000:]
    wandb_id = json.loads((run_dir / "wandb" / "run.json").read_text())["id"]

    longer = run_train([*args, "trainer.max_steps=15"])  # the same command, extended: continues, starts nothing anew
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "Resuming the run in" in longer.stdout and "step 10" in longer.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 15
    assert json.loads((run_dir / "wandb" / "run.json").read_text())["id"] == wandb_id  # the same W&B run
    assert sorted(loss_curve(run_dir)) == list(range(15))  # the history of both sessions, none deleted
    assert not list((run_dir / "checkpoints").glob("*-v1.ckpt"))

    again = run_train([*args, "trainer.max_steps=15"])  # finished: says so, touches nothing, succeeds
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is at step 15, and trainer.max_steps=15: nothing to train" in again.stdout
    assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_resume_false_refuses_to_overwrite_and_true_needs_a_run(clocked_run, text_corpus, tmp_path):
    refused = run_train([*TINY, *data(text_corpus), "resume=false", f"hydra.run.dir={clocked_run}"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already holds a run (completed after 23 steps)" in refused.stderr
    empty = run_train([*TINY, *data(text_corpus), "resume=true", f"hydra.run.dir={tmp_path / 'new'}"])
    assert empty.returncode == 2 and "holds no run to continue" in empty.stderr


def test_a_finished_run_resumed_by_path_without_more_steps_says_so(clocked_run, text_corpus):
    proc = run_train(
        [*TINY, *data(text_corpus), *CLOCK, "trainer.max_steps=23", f"ckpt_path={clocked_run}/checkpoints/last.ckpt"]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is at step 23, and trainer.max_steps=23: nothing to train" in proc.stderr


@pytest.mark.slow
def test_resume_with_a_new_learning_rate_stops_or_applies_it(clocked_run, text_corpus, tmp_path):
    ckpt = f"ckpt_path={clocked_run}/checkpoints/last.ckpt"
    args = [*TINY, *data(text_corpus), "trainer.max_steps=26", ckpt, "model.optimizer.lr=1e-4"]
    refused = run_train(args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "model.optimizer.lr: 0.002 -> 0.0001" in refused.stderr and "resume_changes=allow" in refused.stderr
    allowed = run_train([*args, "resume_changes=allow", f"hydra.run.dir={tmp_path / 'allowed'}"])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "Resuming with changed settings" in allowed.stdout
    last_lr = float([r for r in metric_rows(tmp_path / "allowed") if r.get("lr")][-1]["lr"])
    assert last_lr <= 1e-4  # the schedule now scales from the new peak (the old one was 2e-3)


@pytest.mark.slow
def test_kill_9_then_the_same_command_continues_bit_identically(text_corpus, tmp_path):
    args = [*TINY, *data(text_corpus), *CLOCK, "trainer.max_steps=40", "logger.csv.flush_logs_every_n_steps=1"]
    # bit for bit needs the same thread count on both runs (threads=auto follows the machine's load)
    args.append("threads=1")
    whole = run_train([*args, f"hydra.run.dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    command = [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 180
    # past two clock ticks, mid-run, and past the 15th step's row: Lightning writes a step's metrics after the
    # callbacks' on_train_batch_end, where step-15.ckpt is saved, so a kill in between loses that row, which
    # the resumed run (from step 15) does not compute again
    while not ((run_dir / "checkpoints" / "step-15.ckpt").exists() and _has_row(run_dir, step=14)):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved at the kill
    proc.wait()

    resumed = run_train([*args, f"hydra.run.dir={run_dir}"])  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming the run in" in resumed.stdout
    redone = [int(r["step"]) for r in metric_rows(run_dir) if r.get("train/loss")]
    assert len(redone) - len(set(redone)) <= 5  # at most every_n_steps steps computed twice
    assert loss_curve(run_dir) == loss_curve(tmp_path / "whole")  # every step's loss, bit for bit
    a = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
