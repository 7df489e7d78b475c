"""Document masks and prefix LM from the command line: a run with both completes; asking an encoder for document
masks, or a prefix split that leaves no suffix, stops before compute with one clear message (exit status 2)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, run_dir_from_output, run_train

SMALL = [a for a in TINY if not a.startswith("model=")]
TINY_NET = ["model.net.max_seq_len=64", "model.net.n_layer=2", "model.net.n_head=2", "model.net.d_model=32"]


@pytest.mark.parametrize("model", ["bert_tiny", "t5_tiny"])
def test_document_masks_on_an_encoder_objective_stop_at_start(model, text_corpus):
    proc = run_train([f"model={model}", *SMALL, "data=text", f"data.path={text_corpus}", "data.document_mask=true"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Epoch" not in proc.stdout
    assert "data.document_mask=true" in proc.stderr and "model=gpt" in proc.stderr


def test_a_prefix_split_that_leaves_no_suffix_stops_at_start(text_corpus):
    args = ["model=gpt_prefix", *TINY_NET, *SMALL, "data=text", f"data.path={text_corpus}", "model.prefix_max=1.0"]
    proc = run_train(args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Epoch" not in proc.stdout
    assert "model.prefix_max=1.0" in proc.stderr and "no suffix" in proc.stderr


def test_a_llama_prefix_lm_with_document_masks_trains(text_corpus):
    args = ["model=llama_prefix", *TINY_NET, "model.net.n_kv_head=1", *SMALL, "data=text", f"data.path={text_corpus}"]
    proc = run_train([*args, "data.document_mask=true", "trainer.max_steps=4", "logger=csv"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objective"] == "prefix_lm"
    assert summary["metrics"]["val/loss"] > 0
