"""`python train.py model=bert_cls|gpt_cls data=classification ...` end to end: the run folder keeps the label set,
summary.json has val/acc and val/f1; a classifier on unlabelled data and an LM on labelled data are refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_dir_from_output, run_train

TINY_CLS = [
    "model.net.n_layer=1",
    "model.net.n_head=2",
    "model.net.d_model=32",
    "data.seq_len=32",
    "data.batch_size=16",
    "trainer=cpu",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "logger=csv",
    "print_config=false",
]


def write_task(folder: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    words = {"pos": "good fair sweet".split(), "neg": "foul vile base".split()}
    filler = "the a king lord lady night".split()
    for name, n in (("train", 200), ("val", 40)):
        with (folder / f"{name}.jsonl").open("w") as f:
            for _ in range(n):
                label = rng.choice(["pos", "neg"])
                text = " ".join(rng.choice(filler) for _ in range(5)) + " " + rng.choice(words[label])
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    return folder / "train.jsonl", folder / "val.jsonl"


@pytest.mark.parametrize("model", ["bert_cls", "gpt_cls"])
def test_classifier_run_writes_labels_and_accuracy(tmp_path, model):
    train, val = write_task(tmp_path)
    extra = ["model.net.d_ff=64", "tokenizer=wordpiece"] if model == "bert_cls" else []
    proc = run_train(
        [f"model={model}", "data=classification", f"data.path={train}", f"data.val_path={val}", *extra, *TINY_CLS,
         f"hydra.run.dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir_from_output(proc.stdout)
    assert json.loads((run / "labels.json").read_text()) == ["neg", "pos"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objective"] == "classification" and summary["data"]["labels"] == ["neg", "pos"]
    assert 0 <= summary["metrics"]["val/acc"] <= 1 and 0 <= summary["metrics"]["val/f1"] <= 1
    assert summary["baseline"]["chance_acc"] == 0.5
    assert "val/acc" in proc.stdout and (run / "checkpoints" / "last.ckpt").is_file()


def test_a_classifier_on_unlabelled_data_and_an_lm_on_labels_are_refused(tmp_path, text_corpus):
    train, _ = write_task(tmp_path)
    proc = run_train(["model=gpt_cls", "data=text", f"data.path={text_corpus}", *TINY_CLS])
    assert proc.returncode == 2 and "trains on labelled texts: use data=classification" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_train(["model=gpt_tiny", "data=classification", f"data.path={train}", *TINY_CLS])
    assert proc.returncode == 2 and "model=bert_cls, gpt_cls or llama_cls" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow  # ~40 s: fetches the corpus and trains a tokenizer on it
@pytest.mark.network
def test_bert_cls_on_the_shakespeare_genre_demo(tmp_path):
    """The bundled demo as a user runs it (tiny and short: the figures are bench/finetune.py's business)."""
    proc = run_train(
        ["model=bert_cls", "data=shakespeare_genre", "tokenizer=wordpiece", "tokenizer.vocab_size=500",
         "model.net.d_ff=64", *TINY_CLS, "trainer.max_steps=4", "trainer.val_check_interval=4",
         "trainer.limit_val_batches=2", f"hydra.run.dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["labels"] == ["comedy", "history", "tragedy"]
    assert {"val/acc", "val/f1", "val/loss"} <= set(summary["metrics"])
    assert summary["baseline"]["chance_acc"] == pytest.approx(1 / 3)
