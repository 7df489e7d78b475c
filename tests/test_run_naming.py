"""W&B run names: the overrides that differ from the defaults (lmforge.run_naming)."""

from __future__ import annotations

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from lmforge.run_naming import differing_overrides, short_name


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield


def names(overrides: list[str]) -> list[str]:
    choices = compose(config_name="train", overrides=overrides, return_hydra_config=True).hydra.runtime.choices
    return differing_overrides(overrides, dict(choices), "train")


def test_overrides_equal_to_the_defaults_are_left_out(hydra_conf):
    assert names(["model=gpt", "model.optimizer.lr=2e-3", "trainer.max_steps=800"]) == []


def test_overrides_that_change_something_stay_in_typed_order(hydra_conf):
    assert names(["model.optimizer.lr=1e-3", "model=gpt_tiny", "data.batch_size=4"]) == [
        "model.optimizer.lr=1e-3",
        "model=gpt_tiny",
        "data.batch_size=4",
    ]


def test_values_are_compared_under_the_chosen_groups(hydra_conf):
    # gpt_tiny already has n_layer=2; the default gpt has 4
    assert names(["model=gpt_tiny", "model.net.n_layer=2"]) == ["model=gpt_tiny"]
    assert names(["model.net.n_layer=2"]) == ["model.net.n_layer=2"]


def test_short_names_keep_keys_unambiguous():
    assert (
        short_name(["model=gpt_tiny", "model.optimizer.lr=1e-3", "data.path=/x/corpus"])
        == "model=gpt_tiny lr=1e-3 path=corpus"
    )
    assert short_name(["model.net.dropout=0.1", "data.dropout=0.2"]) == "model.net.dropout=0.1 data.dropout=0.2"
