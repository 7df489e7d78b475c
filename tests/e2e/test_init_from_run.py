"""`model.init_from=<lmforge run folder | .ckpt>`: a pretrained BERT run into model=bert_cls (and GPT into gpt_cls)
loads the backbone bit for bit, initialises the new head, drops the MLM head, and says so in summary.json."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO, TINY, run_dir_from_output, run_train
from test_classification_e2e import TINY_CLS, write_task

from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError

pytestmark = pytest.mark.slow  # two short pretraining runs, then fine-tuning runs


@pytest.fixture(scope="module")
def pretrained(text_corpus):
    out = {}
    for model in ("bert_tiny", "gpt_tiny"):
        args = [f"model={model}", *[a for a in TINY if not a.startswith("model=")]]
        proc = run_train(
            [
                *args,
                "data=text",
                f"data.path={text_corpus}",
                "trainer.max_steps=10",
                "trainer.val_check_interval=5",
                "logger=csv",
            ]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[model] = run_dir_from_output(proc.stdout)
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def classifier_from(run_dir, model: str, task, extra: list[str] = ()):
    """The objective lmforge.train builds for a fine-tuning run, and the init_from account."""
    from lmforge.init_from import load_init
    from lmforge.parallel.wrap import ScaleOptions
    from lmforge.train import build_data, build_objective

    train, val = task
    cfg = compose(
        [f"model={model}", "data=classification", f"data.path={train}", f"data.val_path={val}", "data.seq_len=32",
         f"model.init_from={run_dir}", "trainer=cpu", *extra]
    )  # fmt: skip
    init_net, weights = load_init(cfg)
    assert init_net is None and weights is not None
    data = build_data(cfg)
    model_obj = build_objective(cfg, data, None, ScaleOptions(), weights)
    return cfg, model_obj, weights.load_into(model_obj.net)


@pytest.mark.parametrize(
    ("source", "model", "head"), [("bert_tiny", "bert_cls", "classifier"), ("gpt_tiny", "gpt_cls", "score")]
)
def test_the_backbone_loads_exactly_and_the_head_is_new(pretrained, task, source, model, head):
    run_dir = pretrained[source]
    cfg, objective, report = classifier_from(run_dir, model, task)
    assert cfg.tokenizer.path == str(run_dir / "tokenizer.json")  # the run's tokenizer
    pre = {
        k.removeprefix("net."): v
        for k, v in read_checkpoint(run_dir / "checkpoints" / "best.ckpt")["state_dict"].items()
    }
    net = objective.net
    backbone = net.backbone.state_dict()
    assert set(backbone) == {k for k in pre if not k.startswith(("lm_head", "head_fc", "head_ln"))}
    for k, v in backbone.items():
        assert torch.equal(v, pre[k].float()), k  # bit-identical
    assert f"{head}.weight" in report["new"] and not any(k.startswith("backbone.") for k in report["new"])
    assert "lm_head.weight" in report["dropped"]
    assert report["loaded_tensors"] == len(backbone) and report["checkpoint"].endswith("best.ckpt")
    w = getattr(net, head).weight
    assert 0.005 < w.std().item() < 0.05  # a fresh N(0, 0.02) head, not left at zero or copied from anywhere
    assert net.config.n_layer == 2 and net.config.d_model == 32  # the source's dims replaced model=*_cls's


def test_fine_tuning_run_records_init_from_in_summary(pretrained, task, tmp_path):
    train, val = task
    proc = run_train(
        ["model=bert_cls", "data=classification", f"data.path={train}", f"data.val_path={val}",
         f"model.init_from={pretrained['bert_tiny']}", *TINY_CLS, f"hydra.run.dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    init = summary["init_from"]
    assert init["source"] == str(pretrained["bert_tiny"]) and "classifier.weight" in init["new"]
    assert "lm_head.bias" in init["dropped"] and init["loaded_params"] > 0
    assert "init_from" in proc.stdout and "dropped (unused)" in proc.stdout
    assert "val/acc" in summary["metrics"]


def test_init_from_a_run_refuses_another_family_a_missing_best_ckpt_and_another_tokenizer(pretrained, task, tmp_path):
    from lmforge.init_from import load_init

    train, _ = task
    data = ["data=classification", f"data.path={train}", "data.seq_len=32"]
    with pytest.raises(ConfigError, match=r"holds a BERT \(bert family\).*trains a GPTClassifier.*model=bert_cls"):
        load_init(compose(["model=gpt_cls", *data, f"model.init_from={pretrained['bert_tiny']}"]))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"without checkpoints/best.ckpt \(it has checkpoints/last.ckpt"):
        load_init(compose(["model=bert_cls", *data, f"model.init_from={tmp_path}"]))
    other = pretrained["gpt_tiny"] / "tokenizer.json"
    with pytest.raises(ConfigError, match="vocab mismatch"):
        load_init(
            compose(["model=bert_cls", *data, "tokenizer=pretrained", f"tokenizer.path={other}",
                     f"model.init_from={pretrained['bert_tiny']}"])
        )  # fmt: skip
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_init(compose(["model=bert_cls", *data, f"model.init_from={tmp_path / 'nothing'}"]))


def test_an_hf_backbone_goes_under_a_classifier_head(pretrained, task, tmp_path):
    """model.init_from=<HF BertForMaskedLM folder> with model=bert_cls: the same matching as for a run."""
    from lmforge.export import export

    folder = export(pretrained["bert_tiny"] / "checkpoints" / "best.ckpt", tmp_path / "hf")
    cfg, objective, report = classifier_from(folder, "bert_cls", task)
    assert cfg.tokenizer.path == str(folder / "tokenizer.json")
    pre = read_checkpoint(pretrained["bert_tiny"] / "checkpoints" / "best.ckpt")["state_dict"]
    for k, v in objective.net.backbone.state_dict().items():
        assert torch.equal(v, pre[f"net.{k}"].float()), k
    assert "classifier.weight" in report["new"] and "lm_head.weight" in report["dropped"]
