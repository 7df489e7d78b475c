"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

CONF = REPO / "conf"
GROUPS = ["data", "tokenizer", "model", "trainer", "logger", "callbacks", "paths", "hydra", "debug", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


# Options that need a value the user must supply.
REQUIRED = {
    ("data", "text"): ["data.path=unused"],
    ("data", "jsonl"): ["data.path=unused"],
    ("data", "hf"): ["data.path=unused"],
    ("data", "pairs"): ["data.path=unused.jsonl"],
    ("data", "instructions"): ["data.path=unused.jsonl"],
    ("data", "classification"): ["data.path=unused.jsonl"],
    ("tokenizer", "pretrained"): ["tokenizer.path=unused.json"],
}
ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), f"conf/{g} is empty"


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}", *REQUIRED.get((group, option), [])], tmp_path)
    with open_dict(cfg):
        cfg.model.net.vocab_size = 128
        if "num_labels" in cfg.model.net.keys():  # a classifier: lmforge.train sets it from the training file
            cfg.model.net.num_labels = 3
    # Instantiate every object the run would build from this composition.
    if group != "tokenizer" or option != "pretrained":
        instantiate(cfg.tokenizer)
    if group == "data" or group == "experiment":
        instantiate(cfg.data)
    if group in ("model", "experiment"):
        model = instantiate(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0
    for key in ("callbacks", "logger"):
        for node in (cfg.get(key) or {}).values():
            assert instantiate(node) is not None
    if cfg.trainer.accelerator != "gpu" or torch.cuda.is_available():
        trainer = instantiate(cfg.trainer, logger=False)
        assert trainer.max_steps == cfg.trainer.max_steps


def test_gpt2_124m_has_gpt2_small_dimensions(tmp_path):
    cfg = compose_train(["model=gpt2_124m"], tmp_path)
    with open_dict(cfg):
        cfg.model.net.vocab_size = 50257
    net = instantiate(cfg.model.net)
    assert net.num_parameters() == 124_439_808  # GPT-2 small, tied embeddings


@pytest.mark.parametrize(
    "model,vocab,params",
    [
        ("bert_base", 30522, 109_514_298),  # BertForMaskedLM, bert-base-uncased
        ("t5_small", 32128, 60_506_624),
    ],
)  # T5ForConditionalGeneration, t5-small
def test_bert_base_and_t5_small_have_their_dimensions(model, vocab, params, tmp_path):
    cfg = compose_train([f"model={model}"], tmp_path)
    with open_dict(cfg):
        cfg.model.net.vocab_size = vocab
    assert instantiate(cfg.model.net).num_parameters() == params


# The model options share conf/model/base/objective.yaml and the LM data options conf/data/base/lm.yaml; what each
# option resolves to is fixed here, so a change to a base shows up as the options it moves.
@pytest.mark.parametrize(
    "model,lr,betas,eps,weight_decay,warmup_steps",
    [
        ("gpt", 2e-3, [0.9, 0.95], 1e-8, 0.1, 50),
        ("gpt_tiny", 2e-3, [0.9, 0.95], 1e-8, 0.1, 50),
        ("gpt2_124m", 6e-4, [0.9, 0.95], 1e-8, 0.1, 700),
        ("bert", 1e-3, [0.9, 0.98], 1e-6, 0.01, 50),
        ("bert_tiny", 1e-3, [0.9, 0.98], 1e-6, 0.01, 50),
        ("bert_base", 1e-4, [0.9, 0.98], 1e-6, 0.01, 10000),
        ("bert_cls", 1e-3, [0.9, 0.98], 1e-6, 0.01, 20),
        ("gpt_cls", 1e-3, [0.9, 0.95], 1e-8, 0.1, 20),
        ("llama_cls", 1e-3, [0.9, 0.95], 1e-8, 0.1, 20),
        ("t5", 1e-3, [0.9, 0.98], 1e-8, 0.01, 50),
        ("t5_tiny", 1e-3, [0.9, 0.98], 1e-8, 0.01, 50),
        ("t5_small", 1e-3, [0.9, 0.98], 1e-8, 0.01, 1000),
    ],
)
def test_each_model_keeps_its_optimizer_and_schedule(model, lr, betas, eps, weight_decay, warmup_steps, tmp_path):
    cfg = compose_train([f"model={model}", "model.optimizer.lr=0.5", "model.scheduler.warmup_steps=7"], tmp_path)
    assert cfg.model.optimizer.lr == 0.5 and cfg.model.scheduler.warmup_steps == 7  # the keys users type
    cfg = compose_train([f"model={model}"], tmp_path)
    assert OmegaConf.to_container(cfg.model.optimizer) == {
        "_target_": "torch.optim.AdamW",
        "_partial_": True,
        "lr": lr,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
    }
    assert OmegaConf.to_container(cfg.model.scheduler) == {
        "_target_": "lmforge.objectives.schedules.warmup_cosine",
        "_partial_": True,
        "warmup_steps": warmup_steps,
        "min_lr_ratio": 0.1,
    }
    assert cfg.model.init_from is None


LM_CORPORA = {
    "shakespeare": "lmforge.data.shakespeare.ShakespeareCorpus",
    "text": "lmforge.data.corpus.TextFiles",
    "jsonl": "lmforge.data.jsonl.JsonlFiles",
    "hf": "lmforge.data.hf_datasets.HFDataset",
}


def test_lm_data_options_share_their_settings_and_differ_in_the_corpus(tmp_path):
    shared = None
    for option, corpus in LM_CORPORA.items():
        cfg = compose_train([f"data={option}", *REQUIRED.get(("data", option), [])], tmp_path)
        data = OmegaConf.to_container(cfg.data, resolve=True)
        assert data.pop("corpus")["_target_"] == corpus
        own = {k: data.pop(k) for k in ("path", "text_field") if k in data}
        assert own.get("path", "unused") == "unused"
        if shared is None:
            shared = data
        assert data == shared, option
    assert shared["_target_"] == "lmforge.data.datamodule.LMDataModule"
    assert (shared["seq_len"], shared["batch_size"], shared["val_fraction"], shared["seed"]) == (128, 32, 0.05, 1337)


def _conf_copy(tmp_path: Path) -> Path:
    """conf/ without whatever this machine keeps in conf/local/."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf, ignore=lambda d, names: names if Path(d).name == "local" else [])
    return conf


def _compose_from(conf: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_local_config_is_optional_and_composed_when_present(tmp_path):
    conf = _conf_copy(tmp_path)
    plain = _compose_from(conf, [])
    assert not (conf / "local" / "default.yaml").exists()
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\npaths:\n  cache_dir: /machine/cache\ntrainer:\n  devices: 2\n"
    )
    (conf / "local" / "cluster.yaml").write_text("# @package _global_\ntrainer:\n  devices: 8\n")
    local = _compose_from(conf, [])
    assert local.paths.cache_dir == "/machine/cache" and local.trainer.devices == 2
    with open_dict(local):
        local.paths.cache_dir, local.trainer.devices = plain.paths.cache_dir, plain.trainer.devices
    assert local == plain  # nothing else moves
    # composed after the experiment (its values win over an experiment's) and before the command line
    assert _compose_from(conf, ["experiment=gpt2_124m"]).trainer.devices == 2
    assert _compose_from(conf, ["trainer.devices=3"]).trainer.devices == 3
    assert _compose_from(conf, ["local=cluster"]).trainer.devices == 8


def test_a_monitor_is_checked_against_what_the_objective_logs():
    from lmforge.errors import ConfigError
    from lmforge.validate import check_monitors

    def cfg(model: str, monitor: str):
        return OmegaConf.create(
            {"model": {"_target_": model}, "callbacks": {"model_checkpoint": {"monitor": monitor}, "progress": {}}}
        )

    check_monitors(cfg("lmforge.objectives.mlm.MaskedLM", "val/acc"))  # BERT logs masked-token accuracy
    check_monitors(cfg("lmforge.objectives.seq2seq.Seq2SeqLM", "val/bleu"))
    with pytest.raises(ConfigError, match="val/acc"):
        check_monitors(cfg("lmforge.objectives.clm.CausalLM", "val/acc"))  # a causal LM logs no accuracy
