"""Validation and test share each objective's evaluation (objectives/base.py: eval_step, on_eval_epoch_end): on the
same batches, test/* are exactly val/*, whatever metrics the objective adds (MLM accuracy, seq2seq BLEU)."""

from __future__ import annotations

import lightning as L
import test_mlm
import test_seq2seq
import torch
from torch.utils.data import DataLoader


def evaluate_both(model: L.LightningModule, loader: DataLoader, root) -> tuple[dict, dict]:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    (val,) = trainer.validate(model, loader, verbose=False)
    (test,) = trainer.test(model, loader, verbose=False)
    return val, test


def same_metrics(val: dict, test: dict, names: set[str]) -> None:
    assert {k.split("/", 1)[1] for k in val} == names and set(test) == {f"test/{n}" for n in names}
    for name in names:
        assert test[f"test/{name}"] == val[f"val/{name}"], name


def test_mlm_test_metrics_are_its_validation_metrics(tmp_path):
    torch.manual_seed(0)
    model = test_mlm.objective()
    builder = model.batch_builder(32, test_mlm.SPECIAL)
    loader = DataLoader(
        list(test_mlm.successor_stream(30 * 64, seed=2).reshape(-1, 30)), batch_size=16,
        collate_fn=builder.for_split("test"),
    )  # fmt: skip
    val, test = evaluate_both(model, loader, tmp_path)
    same_metrics(val, test, {"loss", "ppl", "acc"})
    assert 0 < test["test/loss"] < 10


def test_seq2seq_test_metrics_include_bleu(tmp_path):
    torch.manual_seed(0)
    model = test_seq2seq.objective()
    model.bind_tokenizer(test_seq2seq.word_tokenizer(), test_seq2seq.SPECIAL)
    collate = model.batch_builder(32, test_seq2seq.SPECIAL).pair_collator(16, 16)
    loader = DataLoader(test_seq2seq.reversal_pairs(40, seed=2), batch_size=20, collate_fn=collate)
    val, test = evaluate_both(model, loader, tmp_path)
    same_metrics(val, test, {"loss", "ppl", "bleu"})
