"""The CPU precision default: bf16-mixed only where this CPU measured it faster at the model's width
(lmforge/cpu_precision.py), measured once per machine and width and then read back, the same in every rank."""

from __future__ import annotations

import json
import os

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from lmforge import cpu_precision, resolvers
from lmforge.cpu_precision import CACHE_FILE, ENV, bf16_mixed_is_faster, decision_key
from lmforge.resolvers import cpu_has_bf16, default_precision

CONF = REPO / "conf"

pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU default")
needs_bf16_cpu = pytest.mark.skipif(not cpu_has_bf16(), reason="measures bf16 on a CPU with bf16 instructions")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A cache of its own, no decisions inherited, not a launched rank; `has_bf16(...)` sets what the CPU reports."""
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    for var in (ENV, *cpu_precision.LAUNCHED_RANK_VARS):
        monkeypatch.delenv(var, raising=False)
    default_precision.cache_clear()

    def has_bf16(has: bool) -> None:
        monkeypatch.setattr(resolvers, "cpu_has_bf16", lambda: has)
        default_precision.cache_clear()

    yield has_bf16
    default_precision.cache_clear()


def decide(monkeypatch, **faster_by_width: bool) -> None:
    """Decisions as a run's first process hands them to its ranks (LMFORGE_CPU_PRECISION)."""
    decisions = {decision_key(int(w[1:])): v for w, v in faster_by_width.items()}
    monkeypatch.setenv(ENV, json.dumps(decisions))
    default_precision.cache_clear()


def test_no_bf16_instructions_means_32_true_at_every_width(machine, tmp_path):
    machine(False)
    assert default_precision(4096) == "32-true"  # emulated bf16: 70x slower per matmul than fp32 on an AVX2 EPYC
    assert default_precision(None) == "32-true"
    assert not (tmp_path / CACHE_FILE).exists()  # nothing measured


@needs_bf16_cpu
def test_measured_once_per_width_then_read_back(machine, tmp_path, monkeypatch):
    chosen = default_precision(128)
    entry = json.loads((tmp_path / CACHE_FILE).read_text())[decision_key(128)]
    assert chosen == ("bf16-mixed" if entry["bf16_mixed_faster"] else "32-true")
    assert entry["bf16_mixed_faster"] == (entry["gain"] >= cpu_precision.BF16_MIN_GAIN)
    assert entry["fp32_s"] > 0 and entry["bf16_mixed_s"] > 0
    # the ranks this process starts inherit the decision rather than measuring again
    assert json.loads(os.environ[ENV])[decision_key(128)] == entry["bf16_mixed_faster"]

    # a later run (a new process: nothing inherited) reads the file: flip the remembered answer, and it follows
    flipped = {decision_key(128): {**entry, "bf16_mixed_faster": not entry["bf16_mixed_faster"]}}
    (tmp_path / CACHE_FILE).write_text(json.dumps(flipped))
    monkeypatch.delenv(ENV)
    default_precision.cache_clear()
    assert default_precision(128) == ("32-true" if chosen == "bf16-mixed" else "bf16-mixed")


def test_an_inherited_decision_wins_and_a_launched_rank_never_measures(machine, tmp_path, monkeypatch):
    machine(True)
    decide(monkeypatch, d128=True, d96=False)
    assert default_precision(128) == "bf16-mixed" and default_precision(96) == "32-true"
    # a rank whose launcher passed nothing down (multi-node SLURM) takes the fixed rule, as all its peers do
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert bf16_mixed_is_faster(cpu_precision.RULE_MIN_D_MODEL) is True
    assert bf16_mixed_is_faster(cpu_precision.RULE_MIN_D_MODEL - 64) is False
    assert not (tmp_path / CACHE_FILE).exists()
    assert bf16_mixed_is_faster(cpu_precision.PROBE_MAX_D_MODEL * 2) is True  # too wide to probe: bf16 wins there
    machine(True)
    assert default_precision(None) == "bf16-mixed"  # a family that names its width otherwise


@pytest.mark.parametrize("model, d_model", [("gpt_tiny", 32), ("gpt", 256), ("bert_cls", 256)])
def test_the_trainer_config_passes_the_configured_width(machine, monkeypatch, model, d_model):
    machine(True)
    decide(monkeypatch, d32=False, d256=True, d512=True)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
        assert cfg.model.net.d_model == d_model
        assert cfg.trainer.precision == ("bf16-mixed" if d_model == 256 else "32-true")
        wide = compose("train", overrides=[f"model={model}", "model.net.d_model=512"])
        assert wide.trainer.precision == "bf16-mixed"
        chosen = compose("train", overrides=[f"model={model}", "trainer.precision=32-true"])
        assert chosen.trainer.precision == "32-true"  # a precision the user sets is kept
