"""The CPU precision default follows the model's width (lmforge/resolvers.py, measured by bench/precision.py)."""

from __future__ import annotations

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from lmforge import resolvers
from lmforge.resolvers import BF16_CPU_MIN_D_MODEL, default_precision

CONF = REPO / "conf"

pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU rule")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Which CPU the rule sees: one with bf16 instructions or one without (this machine may be either)."""

    def set_to(has: bool) -> None:
        monkeypatch.setattr(resolvers, "cpu_has_bf16", lambda: has)
        default_precision.cache_clear()

    yield set_to
    default_precision.cache_clear()


def test_bf16_only_where_the_cpu_has_it_and_the_model_is_wide_enough(cpu_bf16):
    cpu_bf16(True)
    assert default_precision(BF16_CPU_MIN_D_MODEL // 2) == "32-true"  # casts cost more than bf16 saves
    assert default_precision(BF16_CPU_MIN_D_MODEL) == "bf16-mixed"
    assert default_precision(None) == "bf16-mixed"  # a family that names its width otherwise
    cpu_bf16(False)
    assert default_precision(4096) == "32-true"  # emulated bf16 is slower than fp32 at every width


@pytest.mark.parametrize("model, d_model", [("gpt_tiny", 32), ("gpt", 256), ("bert_cls", 256)])
def test_the_trainer_config_passes_the_configured_width(cpu_bf16, model, d_model):
    cpu_bf16(True)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
        assert cfg.model.net.d_model == d_model
        assert cfg.trainer.precision == default_precision(d_model)
        wide = compose("train", overrides=[f"model={model}", "model.net.d_model=512"])
        assert wide.trainer.precision == "bf16-mixed"
        chosen = compose("train", overrides=[f"model={model}", "trainer.precision=32-true"])
        assert chosen.trainer.precision == "32-true"  # a precision the user sets is kept
