"""Every option of every config group composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

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
