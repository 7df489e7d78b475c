"""A user's mistake stops the run before compute with one clear message, exit status 2, no traceback."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_dir_from_output, run_train, some_slow


@pytest.fixture(scope="module")
def bad_utf8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_utf8")
    (folder / "a.txt").write_text("fine text\n" * 50)
    (folder / "b.txt").write_bytes(b"good start " * 10 + b"\xff\xfe bad bytes")
    return folder


@pytest.fixture(scope="module")
def empty_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("empty")
    (folder / "a.txt").write_text("")
    (folder / "b.txt").write_text("")
    return folder


CASES = {
    "zero lr": (["model.optimizer.lr=0"], ["model.optimizer.lr=0", "positive"]),
    "negative lr": (["model.optimizer.lr=-1e-3"], ["model.optimizer.lr=-0.001"]),
    "zero batch": (["data.batch_size=0"], ["data.batch_size=0"]),
    "negative batch": (["data.batch_size=-4"], ["data.batch_size=-4"]),
    "zero steps": (["trainer.max_steps=0"], ["trainer.max_steps=0"]),
    "seq_len over context": (["data.seq_len=65"], ["data.seq_len=65", "model.net.max_seq_len=64"]),
    "missing corpus": (["data.path=/nonexistent/corpus"], ["data.path='/nonexistent/corpus'", "no such file"]),
    "seed not a number": (["seed=abc"], ["seed='abc' must be a whole number"]),
    "seed not whole": (["seed=1.5"], ["seed=1.5 must be a whole number"]),
    "flag not a bool": (["print_config=yes"], ["print_config='yes' must be true or false"]),
    "monitor typo": (
        ["callbacks.model_checkpoint.monitor=val/los"],
        ["callbacks.model_checkpoint.monitor='val/los'", "CausalLM objective logs no such metric", "val/loss"],
    ),
    # every mistake of one command in one message, a line each
    "several at once": (
        ["seed=-1", "model.optimizer.lr=0", "compile=maybe", "data.seq_len=65"],
        ["4 problems in the config", "seed=-1", "model.optimizer.lr=0", "compile='maybe'", "data.seq_len=65"],
    ),
}


@pytest.mark.parametrize("name", some_slow(CASES, fast={"missing corpus", "monitor typo", "several at once"}))
def test_config_mistakes_fail_fast_and_clearly(name, text_corpus):
    overrides, expected = CASES[name]
    args = [*TINY, "data=text", f"data.path={text_corpus}", "logger=csv", *overrides]
    proc = run_train(args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in: {proc.stderr[-800:]}"
    assert "Epoch" not in proc.stdout, "training started despite the bad input"


def test_invalid_utf8_names_file_and_offset(bad_utf8):
    proc = run_train([*TINY, "data=text", f"data.path={bad_utf8}", "logger=csv"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "b.txt" in proc.stderr and "offset 110" in proc.stderr and "data.corpus.errors=replace" in proc.stderr


def test_empty_corpus_is_named(empty_corpus):
    proc = run_train([*TINY, "data=text", f"data.path={empty_corpus}", "logger=csv"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "empty" in proc.stderr


def test_unknown_config_option_lists_the_choices():
    proc = run_train(["model=gpt_huge"])
    assert proc.returncode != 0
    assert "gpt_tiny" in proc.stderr  # Hydra names the available options


def test_jsonl_line_without_the_text_field_is_named(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n' * 5 + '{"body": "no text here"}\n')
    proc = run_train([*TINY, "data=jsonl", f"data.path={tmp_path / 'a.jsonl'}", "logger=csv"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "a.jsonl:6" in proc.stderr and "no field 'text'" in proc.stderr and "data.text_field" in proc.stderr


def test_text_corpus_refuses_a_structured_file(tmp_path):
    # data=text would tokenize the JSON syntax as prose: the message names the file and the option that reads it
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n' * 5)
    run = tmp_path / "run"
    proc = run_train([*TINY, "data=text", f"data.path={tmp_path / 'a.jsonl'}", "logger=csv", f"hydra.run.dir={run}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "a.jsonl is a .jsonl file" in proc.stderr and "data=jsonl" in proc.stderr
    assert "a.jsonl is a .jsonl file" in (run / "train.log").read_text()  # the error is kept with the run


def test_vocabulary_too_large_for_the_token_dtype(text_corpus):
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "logger=csv",
            "tokenizer.vocab_size=70000",
            "data.token_dtype=uint16",
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.token_dtype=uint16" in proc.stderr and "70,000" in proc.stderr


def test_diverging_loss_stops_within_log_every_n_steps_and_keeps_checkpoints(text_corpus, tmp_path, monkeypatch):
    """The finite-loss check runs at logging steps only (no device sync per step), but a loss that goes bad stops
    the run with one clear message at most log_every_n_steps steps later; the checkpoints saved before stay."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    bad_from, every = 12, 4
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "logger=csv",
            "trainer.max_steps=40",
            f"trainer.log_every_n_steps={every}",
            "+callbacks.inject_inf._target_=inject_inf.InfWeightFrom",
            f"+callbacks.inject_inf.step={bad_from}",
        ]
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "train/loss became" in proc.stderr and "model.optimizer.lr" in proc.stderr, proc.stderr[-800:]
    run_dir = run_dir_from_output(proc.stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "LmforgeError" in summary["error"]
    assert bad_from <= summary["steps"] < bad_from + every
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 10  # the validation at step 10 saved it; nothing after overwrote it
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # the gradient norm is computed only in logging steps, and logged in every one of them
    loss_steps = {r["step"] for r in rows if r.get("train/loss")}
    assert loss_steps and loss_steps == {r["step"] for r in rows if r.get("grad_norm")}


LLAMA_TINY = ["model=llama_tiny", *[a for a in TINY if not a.startswith("model=")]]
LLAMA_CASES = {
    "kv heads": (["model.net.n_kv_head=3"], ["model.net.n_head=4", "model.net.n_kv_head=3", "1, 2, 4"]),
    "heads": (["model.net.d_model=30"], ["model.net.d_model=30", "model.net.n_head=4"]),
    "odd rope head": (["model.net.d_model=36"], ["model.net.position=rope", "9", "odd"]),
    "unknown position": (["model.net.position=rotary"], ["model.net.position='rotary'", "rope, alibi, none"]),
}


@pytest.mark.parametrize("name", some_slow(LLAMA_CASES, fast={"kv heads"}))
def test_llama_shape_mistakes_fail_fast_and_clearly(name, text_corpus):
    overrides, expected = LLAMA_CASES[name]
    proc = run_train([*LLAMA_TINY, "data=text", f"data.path={text_corpus}", "logger=csv", *overrides])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in: {proc.stderr[-800:]}"
    assert "Epoch" not in proc.stdout, "training started despite the bad input"


@pytest.mark.parametrize("where", some_slow(["run folder", "sweep folder", "cache folder"], fast={"run folder"}))
def test_a_folder_that_cannot_be_written_is_one_message(where, text_corpus, tmp_path):
    """As root (CI) permissions do not stop a write, so the unwritable folder here has a file in its way; a read-only
    filesystem or a permission error takes the same path (errors.folder_error)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = {
        "run folder": [f"hydra.run.dir={blocker}/run"],
        "sweep folder": [f"hydra.sweep.dir={blocker}/sweep", "seed=1,2"],
        "cache folder": [f"paths.cache_dir={blocker}/cache", f"hydra.run.dir={tmp_path}/run"],
    }[where]
    multirun = ["-m"] if where == "sweep folder" else []
    args = [*multirun, *TINY, "data=text", f"data.path={text_corpus}", "logger=csv", "trainer.max_steps=2", *target]
    proc = run_train(args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"cannot write {blocker}/" in proc.stderr and "a file is in the way of a folder" in proc.stderr
    assert blocker.read_text() == "not a folder"  # nothing already there was touched
