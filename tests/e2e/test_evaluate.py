"""The test split end to end: `train.py ... data.test_fraction=...` scores best.ckpt on it after fit (summary.json's
test/* metrics and "test" section), and `python -m lmforge.evaluate` scores a finished run on it, or on other data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, WORDS, run_dir_from_output, run_train

from lmforge.data.tokenizer import TokenizerSpec


def cyclic_corpus(folder: Path, n_files: int = 12, words: int = 2000) -> Path:
    """Each file walks the word list in order from its own offset: a model that learns the successor of each word
    predicts far better than the unigram baseline (which knows only word frequencies, all equal here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        seq = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(words)]
        lines = [" ".join(seq[j : j + 10]) for j in range(0, len(seq), 10)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def run_evaluate(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )


@pytest.fixture(scope="module")
def tested_run(tmp_path_factory):
    corpus = cyclic_corpus(tmp_path_factory.mktemp("cyclic"))
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={corpus}",
            "data.test_fraction=0.2",
            "trainer.max_steps=150",
            "trainer.val_check_interval=50",
            "logger=csv",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, json.loads((run_dir / "summary.json").read_text()), proc, corpus


@pytest.mark.slow
def test_fit_scores_the_best_checkpoint_on_the_test_split(tested_run):
    run_dir, s, proc, _ = tested_run
    test = s["test"]
    assert test["checkpoint"] == "checkpoints/best.ckpt"
    best = torch.load(run_dir / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    assert test["step"] == best["global_step"]
    assert s["metrics"]["test/loss"] == test["metrics"]["test/loss"]
    assert "test/ppl" in s["metrics"] and "val/loss" in s["metrics"]  # the final validation's metrics are kept
    assert s["data"]["test_tokens"] == test["tokens"] > 0
    # the model learned: well below the floor of a model that knows only token frequencies
    assert test["unigram_test_loss"] == s["baseline"]["unigram_test_loss"]
    assert s["metrics"]["test/loss"] < test["unigram_test_loss"] - 1.0, (s["metrics"], test)
    assert s["tokens"] == 150 * 8 * 32  # loading best.ckpt for the test does not change what the run counted
    assert f"from best.ckpt (step {test['step']})" in proc.stdout
    header = (run_dir / "csv/metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/loss" in header and "test/ppl" in header  # the loggers got them too


@pytest.mark.slow
def test_evaluate_reproduces_the_test_loss_of_the_run(tested_run):
    run_dir, s, _, _ = tested_run
    proc = run_evaluate([str(run_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["split"] == "test"
    assert result["metrics"]["test/loss"] == pytest.approx(s["metrics"]["test/loss"], abs=1e-4)
    assert result["checkpoint"]["step"] == s["test"]["step"]
    assert result["checkpoint"]["path"].endswith("checkpoints/best.ckpt")
    assert result["data"]["test_tokens"] == s["data"]["test_tokens"]
    assert "test/loss" in proc.stdout
    # a .ckpt names the same model
    out = run_dir.parent / "from_ckpt.json"
    proc = run_evaluate([str(run_dir / "checkpoints/best.ckpt"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["metrics"]["test/loss"] == pytest.approx(result["metrics"]["test/loss"], 1e-6)


@pytest.mark.slow
def test_evaluate_on_new_data(tested_run, tmp_path):
    run_dir, s, _, corpus = tested_run
    # new text in the same pattern, as a test split of its own
    held_out = cyclic_corpus(tmp_path / "held", n_files=2, words=600)
    out = tmp_path / "new.json"
    proc = run_evaluate([str(run_dir), "data.test_fraction=0", f"data.test_path={held_out}", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads(out.read_text())
    assert new["split"] == "test" and new["data"]["test_tokens"] < s["data"]["test_tokens"]
    assert new["metrics"]["test/loss"] < new["baseline"]["unigram_test_loss"] - 1.0
    # other data without a test split: its validation split is scored, and the user is told
    proc = run_evaluate([str(run_dir), f"data.path={corpus / 'doc03.txt'}", "data.test_fraction=0", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no test split" in proc.stdout
    val = json.loads(out.read_text())
    assert val["split"] == "val" and "val/loss" in val["metrics"] and val["data"]["corpus"].endswith("doc03.txt")


@pytest.mark.slow
def test_evaluate_bad_input_is_named(tested_run, tmp_path):
    run_dir, *_ = tested_run
    proc = run_evaluate([str(tmp_path)])
    assert proc.returncode == 2 and "is not a run folder (it has no config.yaml)" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_evaluate([str(tmp_path / "missing")])
    assert proc.returncode == 2 and "no such run folder or checkpoint" in proc.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "tokenizer.json"):
        shutil.copy(run_dir / name, bare / name)
    proc = run_evaluate([str(bare)])
    assert proc.returncode == 2 and "has no checkpoint" in proc.stderr
    # a checkpoint beside another tokenizer
    (bare / "checkpoints").mkdir()
    shutil.copy(run_dir / "checkpoints/best.ckpt", bare / "checkpoints/best.ckpt")
    _, other = TokenizerSpec("char", 50).load_or_train(["a few words"], {"eos": "<|endoftext|>"}, "x", tmp_path / "c")
    shutil.copy(other, bare / "tokenizer.json")
    proc = run_evaluate([str(bare)])
    assert proc.returncode == 2 and "tokenizer mismatch" in proc.stderr, proc.stderr[-2000:]
    proc = run_evaluate([str(run_dir), "model.optimizer.lr=1"])
    assert proc.returncode == 2 and "evaluate takes overrides of the data keys" in proc.stderr


@pytest.mark.slow  # two train.py start-ups: ~35 s on the shared CPU
def test_test_true_without_a_test_split_stops_before_compute(text_corpus):
    proc = run_train([*TINY, "data=text", f"data.path={text_corpus}", "test=true", "logger=none"])
    assert proc.returncode == 2
    assert "test=true scores the best checkpoint on a test split, and this run has none" in proc.stderr
    proc = run_train([*TINY, "data=text", f"data.path={text_corpus}", "test=maybe", "logger=none"])
    assert proc.returncode == 2 and "test='maybe'" in proc.stderr


@pytest.mark.slow
def test_without_best_ckpt_the_last_weights_are_tested_and_test_false_skips(text_corpus):
    no_callbacks = [a for a in TINY if not a.startswith("callbacks.")]
    args = ["data=text", f"data.path={text_corpus}", "data.test_fraction=0.2", "trainer.max_steps=4", "logger=none"]
    proc = run_train([*no_callbacks, *args, "callbacks=none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert s["test"]["checkpoint"] is None and "last weights" in s["test"]["note"] and s["test"]["step"] == 4
    assert "test/loss" in s["metrics"] and "from the last weights (no best.ckpt)" in proc.stdout
    proc = run_train([*TINY, *args, "test=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert "test" not in s and "test/loss" not in s["metrics"] and s["data"]["test_tokens"] > 0


def reversal_pairs_file(path: Path, n: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"source": " ".join(words), "target": " ".join(reversed(words))}) + "\n")
    return path


@pytest.mark.slow
def test_pairs_test_split_reports_bleu_after_fit_and_in_evaluate(tmp_path):
    train = reversal_pairs_file(tmp_path / "pairs.jsonl", 400, seed=0)
    test = reversal_pairs_file(tmp_path / "test.jsonl", 30, seed=1)
    args = ["model=t5_tiny", *[a for a in TINY if not a.startswith("model=")], "data=pairs", f"data.path={train}"]
    proc = run_train([*args, f"data.test_path={test}", "trainer.max_steps=10", "logger=none"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    s = json.loads((run_dir / "summary.json").read_text())
    assert {"test/loss", "test/ppl", "test/bleu"} <= set(s["metrics"]) and s["test"]["step"] == 10
    proc = run_evaluate([str(run_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["metrics"]["test/loss"] == pytest.approx(s["metrics"]["test/loss"], abs=1e-4)
    assert result["metrics"]["test/bleu"] == pytest.approx(s["metrics"]["test/bleu"], abs=1e-4)
