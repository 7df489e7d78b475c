"""`python train.py model=bert_nsp` end to end: MLM + NSP trains and logs both losses and val/nsp_acc, the checkpoint
exports to a BertForPreTraining folder whose two heads give our logits in transformers, the folder starts a new
run through model.init_from, and bad pair settings stop before compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY, run_dir_from_output, run_train

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # three train.py runs and an export: about a minute on 2 cores

NSP = [
    "model=bert_nsp",
    *[a for a in TINY if not a.startswith("model=")],
    "model.net.max_seq_len=64",
    "model.net.n_layer=2",
    "model.net.n_head=2",
    "model.net.d_model=32",
    "model.net.d_ff=64",
    "data=text",
]


@pytest.fixture(scope="module")
def run(text_corpus):
    proc = run_train([*NSP, f"data.path={text_corpus}", "trainer.max_steps=10", "logger=csv"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir_from_output(proc.stdout)


def test_bert_nsp_trains_and_logs_both_losses(run):
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["objective"] == "mlm_nsp" and s["model"] == "bert_nsp"
    m = s["metrics"]
    for key in ("train/loss", "train/mlm_loss", "train/nsp_loss", "val/loss", "val/acc", "val/nsp_loss", "val/nsp_acc"):
        assert key in m, key
    assert m["train/loss"] == pytest.approx(m["train/mlm_loss"] + m["train/nsp_loss"], rel=1e-5)
    assert 0 <= m["val/nsp_acc"] <= 1 and 0.3 < m["val/nsp_loss"] < 1.5  # near log 2 after 10 steps
    assert "nsp: predicted" in (run / "samples.txt").read_text()


def test_export_is_bert_for_pretraining_with_equal_heads_and_init_from_takes_it_back(run, text_corpus, tmp_path):
    from lmforge.export import net_from_checkpoint, read_checkpoint

    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.export", str(ckpt), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BertForPreTraining" in proc.stdout
    hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    net = net_from_checkpoint(read_checkpoint(ckpt))
    tok = transformers.AutoTokenizer.from_pretrained(out)
    # [CLS] A [SEP] B [SEP], token types 0 then 1 (the exported post-processor)
    enc = tok("the king and the queen", "speak with the lady", return_tensors="pt", return_token_type_ids=True)
    assert enc["token_type_ids"].sum() > 0
    with torch.no_grad():
        mlm, pair = net.pretraining_logits(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        theirs = hf(**enc)
    assert (mlm - theirs.prediction_logits).abs().max().item() <= 1e-5
    assert (pair - theirs.seq_relationship_logits).abs().max().item() <= 1e-5

    proc = run_train([*NSP, f"data.path={text_corpus}", "trainer.max_steps=1", f"model.init_from={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (run_dir_from_output(proc.stdout) / "config.yaml").read_text()
    assert "pair_head: true" in config


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["data.seq_len=4"], ["data.seq_len=4", "too short for a sentence pair"]),
        (["model.pair_task=order"], ["model.pair_task='order'", "nsp", "sop"]),
    ],
)
def test_bad_pair_settings_stop_with_a_message(text_corpus, args, words):
    proc = run_train([*NSP, f"data.path={text_corpus}", "trainer.max_steps=2", *args])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr + proc.stdout, w
