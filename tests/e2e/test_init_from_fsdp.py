"""`model.init_from=<a sharded FSDP checkpoint folder>` (and a run folder whose best.ckpt is one): a BERT pretrained
with trainer=fsdp on two gloo processes fine-tunes as model=bert_cls, its backbone loaded bit for bit from the
shards (consolidated on read), the MLM head dropped, the run's tokenizer used."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_dir_from_output, run_train
from test_classification_e2e import TINY_CLS, write_task
from test_init_from_run import classifier_from

from lmforge.checkpoints import read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed]  # a two-process FSDP run (~40 s), then a fine-tuning run


@pytest.fixture(scope="module")
def fsdp_run(text_corpus):
    proc = run_train(
        ["model=bert_tiny", *[a for a in TINY if not a.startswith("model=")], "data=text", f"data.path={text_corpus}",
         "trainer.max_steps=10", "trainer.val_check_interval=5", "logger=csv", "trainer=fsdp",
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    for name in ("best.ckpt", "last.ckpt"):
        assert (run_dir / "checkpoints" / name / ".metadata").is_file(), name  # sharded: a folder, one file a rank
    return run_dir


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"))


@pytest.mark.parametrize("which", ["checkpoint folder", "run folder"])
def test_a_sharded_checkpoint_loads_the_backbone_exactly(fsdp_run, task, which):
    source = fsdp_run / "checkpoints" / "last.ckpt" if which == "checkpoint folder" else fsdp_run
    expected = fsdp_run / "checkpoints" / ("last.ckpt" if which == "checkpoint folder" else "best.ckpt")
    cfg, objective, report = classifier_from(source, "bert_cls", task)
    assert report["checkpoint"] == str(expected)
    assert cfg.tokenizer.path == str(fsdp_run / "tokenizer.json")  # the run's tokenizer, found above the folder
    pre = {k.removeprefix("net."): v for k, v in read_checkpoint(expected)["state_dict"].items()}
    backbone = objective.net.backbone.state_dict()
    assert set(backbone) == {k for k in pre if not k.startswith(("lm_head", "head_fc", "head_ln"))}
    for k, v in backbone.items():
        assert torch.equal(v, pre[k].float()), k  # bit-identical, every shard's part in place
    assert "classifier.weight" in report["new"] and "lm_head.weight" in report["dropped"]
    assert report["loaded_tensors"] == len(backbone)


def test_a_fine_tuning_run_starts_from_the_sharded_checkpoint(fsdp_run, task, tmp_path):
    train, val = task
    source = fsdp_run / "checkpoints" / "last.ckpt"
    proc = run_train(
        ["model=bert_cls", "data=classification", f"data.path={train}", f"data.val_path={val}",
         f"model.init_from={source}", *TINY_CLS, "trainer.max_steps=2", "trainer.val_check_interval=2",
         "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["init_from"]["checkpoint"] == str(source) and "classifier.weight" in summary["init_from"]["new"]
    assert "val/acc" in summary["metrics"]
