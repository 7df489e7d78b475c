"""`python train.py model=bert_cls|gpt_cls data=classification ...` end to end: the run folder keeps the label set,
summary.json has val/acc and val/f1; a classifier on unlabelled data and an LM on labelled data are refused."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run per classifier, on the synthetic task."""
    folder = tmp_path_factory.mktemp("cls")
    train, val = write_task(folder)
    out = {}
    for model in ("bert_cls", "gpt_cls"):
        extra = ["model.net.d_ff=64", "tokenizer=wordpiece"] if model == "bert_cls" else []
        proc = run_train(
            [f"model={model}", "data=classification", f"data.path={train}", f"data.val_path={val}", *extra,
             *TINY_CLS, f"hydra.run.dir={folder / model}"]
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "val/acc" in proc.stdout
        out[model] = run_dir_from_output(proc.stdout)
    return out


@pytest.mark.parametrize("model", ["bert_cls", "gpt_cls"])
def test_classifier_run_writes_labels_and_accuracy(runs, model):
    run = runs[model]
    assert json.loads((run / "labels.json").read_text()) == ["neg", "pos"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objective"] == "classification" and summary["data"]["labels"] == ["neg", "pos"]
    assert 0 <= summary["metrics"]["val/acc"] <= 1 and 0 <= summary["metrics"]["val/f1"] <= 1
    assert summary["baseline"]["chance_acc"] == 0.5
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # an export subprocess per family (imports transformers)
@pytest.mark.parametrize("model", ["bert_cls", "gpt_cls"])
def test_exported_classifier_matches_in_transformers(runs, model, tmp_path):
    check_export(runs[model], tmp_path / "hf")


def check_export(run: Path, out: Path) -> None:
    """`python -m lmforge.export` writes a *ForSequenceClassification folder with the labels; transformers, fed by
    the exported tokenizer, gives the logits lmforge gives on the batch its own collator builds."""
    transformers = pytest.importorskip("transformers")
    import torch

    from lmforge.data.classification import TokenExample
    from lmforge.export import net_from_checkpoint, objective_class
    from lmforge.export import read_checkpoint as read

    ckpt_path = run / "checkpoints" / "last.ckpt"
    proc = subprocess.run([sys.executable, "-m", "lmforge.export", str(ckpt_path), str(out)], capture_output=True,
                          text=True, env=os.environ.copy())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ForSequenceClassification" in proc.stdout
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"} and hf.config.label2id == {"neg": 0, "pos": 1}
    tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["the king lord good", "a night foul lady the king lady"]
    enc = tok(texts, padding=True, return_tensors="pt")
    ckpt = read(ckpt_path)
    net, objective = net_from_checkpoint(ckpt), objective_class(ckpt)
    from tokenizers import Tokenizer

    ours_tok = Tokenizer.from_file(str(run / "tokenizer.json"))
    ids = {r: ours_tok.token_to_id(t) for r, t in objective.special_tokens.items()}
    sep = ids.get("sep", ids["eos"])
    from lmforge.objectives.classification import ClassificationBatches

    builder = ClassificationBatches(ids["pad"], sep, ids.get("cls") if "cls" in ids else None, 32)
    batch = builder([TokenExample(np.array(ours_tok.encode(t, add_special_tokens=False).ids), None, 0) for t in texts])
    assert enc["input_ids"].tolist() == batch["input_ids"].tolist()  # the exported tokenizer lays out as training did
    with torch.no_grad():
        ours = net(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        theirs = hf(**enc).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # two runs that stop after their data is built (~25 s)
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
