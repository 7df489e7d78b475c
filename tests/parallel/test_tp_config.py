"""Tensor-parallel settings that cannot work stop with a ConfigError naming the problem and the fix, from the
composed config alone: before any process group exists (lmforge.train checks them before building the Trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lmforge.errors import ConfigError
from lmforge.parallel.tensor import check_tensor_parallel

CONF = Path(__file__).resolve().parents[2] / "conf"


def _cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["trainer=tp", *overrides])


def test_tp_preset_composes_fsdp_and_gives_the_data_parallel_size():
    cfg = _cfg("model=gpt_tiny")
    assert cfg.trainer.strategy._target_ == "lmforge.parallel.fsdp.FSDP2Strategy"
    assert cfg.trainer.strategy.tensor_parallel_size == 2 and cfg.trainer.strategy.meta_init
    assert check_tensor_parallel(cfg, 4) == 2  # 4 ranks = 2 replicas x 2 tensor-parallel ranks
    assert check_tensor_parallel(_cfg("trainer=fsdp", "model=gpt_tiny"), 4) == 4  # FSDP alone: tp 1


@pytest.mark.parametrize(
    ("overrides", "world", "says"),
    [
        (["model=gpt_tiny", "trainer.strategy.tensor_parallel_size=3"], 4, "does not divide the world size 4"),
        (["model=gpt_tiny", "model.net.n_head=1"], 2, "does not divide model.net.n_head=1"),
        (["model=llama", "model.net.n_head=4", "model.net.n_kv_head=1"], 2, "model.net.n_kv_head=1"),
        (["model=llama", "model.net.position=alibi"], 2, "position=alibi"),
        (["model=bert"], 2, "no plan for BERT"),
        (["model=t5"], 2, "no plan for T5"),
        (["model=gpt_tiny", "trainer.strategy.tensor_parallel_size=0"], 2, "must be a positive integer"),
        (["model=gpt_tiny", "trainer=fsdp", "trainer.strategy.sequence_parallel=true"], 2, "needs tensor parallel"),
    ],
)
def test_tp_that_cannot_work_is_refused_before_any_process_group(overrides, world, says):
    with pytest.raises(ConfigError, match=says) as err:
        check_tensor_parallel(_cfg(*overrides), world)
    assert "tensor_parallel_size" in str(err.value) or "position=rope" in str(err.value)
