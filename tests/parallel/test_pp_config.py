"""Pipeline-parallel settings that cannot work stop with a ConfigError naming the problem and the fix, from the
composed config alone: before any process group exists (lmforge.train checks them before building the Trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lmforge.errors import ConfigError
from lmforge.parallel.pipeline import check_pipeline_parallel
from lmforge.parallel.tensor import check_tensor_parallel

CONF = Path(__file__).resolve().parents[2] / "conf"
UNTIED = "model.net.tie_word_embeddings=false"


def _cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["trainer=pp", *overrides])


def test_pp_preset_gives_one_replica():
    cfg = _cfg("model=gpt_tiny", UNTIED)
    assert cfg.trainer.strategy._target_ == "lmforge.parallel.pipeline.PipelineStrategy"
    assert cfg.trainer.strategy.pipeline_parallel_size == 2 and cfg.trainer.strategy.pipeline.schedule == "gpipe"
    assert check_pipeline_parallel(cfg, check_tensor_parallel(cfg, 2)) == 1  # 2 ranks = 1 pipeline of 2 stages
    assert check_pipeline_parallel(cfg, 4) == 2  # 4 ranks = 2 data-parallel replicas of a 2-stage pipeline
    assert check_pipeline_parallel(_cfg("model=llama_tiny", UNTIED), 2) == 1  # the Llama family too
    fsdp = _cfg("trainer=fsdp", "model=gpt_tiny")
    assert check_pipeline_parallel(fsdp, 4) == 4  # other strategies: no pipeline


@pytest.mark.parametrize(
    ("overrides", "world", "says"),
    [
        (["model=gpt_tiny", UNTIED, "trainer.strategy.pipeline_parallel_size=3"], 3, "more stages than the net's 2"),
        (["model=gpt_tiny"], 2, "model.net.tie_word_embeddings=false"),
        (["model=gpt_tiny", UNTIED], 3, "does not divide the world size 3"),
        (["model=gpt_tiny", UNTIED, "trainer.strategy.pipeline_parallel_size=0"], 2, "must be a positive integer"),
        (["model=gpt_tiny", UNTIED, "data.batch_size=6", "trainer.strategy.pipeline.microbatches=4"], 2, "divide"),
        (["model=gpt_tiny", UNTIED, "trainer.strategy.pipeline.schedule=zb"], 2, "gpipe, 1f1b"),
        (
            [
                "model=gpt",
                UNTIED,
                "trainer.strategy.pipeline_parallel_size=4",
                "trainer.strategy.pipeline.schedule=1f1b",
            ],
            4,
            "at least as many micro-batches as stages",
        ),
        (["model=gpt_tiny", UNTIED, "trainer.strategy.pipeline.layers_per_stage=[2,1]"], 2, "add up to"),
        (["model=llama_tiny"], 2, "model.net.tie_word_embeddings=false"),
        (["model=gpt_tiny", UNTIED, "model.net._target_=lmforge.models.heads.GPTClassifier"], 2, "no stage split"),
        (["model=bert_tiny"], 2, "causal LM objective only"),
        (["model=gpt_tiny", UNTIED, "data.document_mask=true"], 2, "document_mask"),
        (["model=gpt_tiny", UNTIED, "compile=model"], 2, "compile=blocks"),
    ],
)
def test_pp_that_cannot_work_is_refused_before_any_process_group(overrides, world, says):
    with pytest.raises(ConfigError, match=says):
        check_pipeline_parallel(_cfg(*overrides), world)
