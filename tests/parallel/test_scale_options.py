"""Scale-out options in one process: global batch / token budget, compile and checkpointing choices,
activation checkpointing's equivalence, the block seam, and the command a Lightning-started rank runs."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmforge.budget import check_budget_config, plan_budget
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT
from lmforge.models.t5 import T5
from lmforge.parallel.init import materialize
from lmforge.parallel.world import planned_world_size
from lmforge.parallel.wrap import ScaleOptions, checkpoint_blocks, transformer_blocks


def _cfg(**top):
    return OmegaConf.create(
        {"seed": 0, "data": {"batch_size": 8}, "trainer": {"max_steps": 100, "accumulate_grad_batches": 1}, **top}
    )


def _trainer_cfg(devices: int):
    return OmegaConf.create(
        {
            "_target_": "lightning.pytorch.Trainer",
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
            "max_steps": 100,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        }
    )


def _world(devices: int) -> int:
    # Lightning's own resolution of the processes, as the Trainer built from this config will have them
    return planned_world_size(_trainer_cfg(devices))


def test_planned_world_size_is_the_trainers():
    for devices in (1, 2):
        # A real Trainer knows its world size at construction; processes start only at fit().
        assert _world(devices) == instantiate(_trainer_cfg(devices)).world_size == devices


def test_global_batch_sets_accumulation_from_world_size():
    cfg = _cfg(global_batch_size=64)
    scale = plan_budget(cfg, _world(2), block_len=128)
    assert scale["accumulate_grad_batches"] == 4 and scale["global_batch_size"] == 64  # 64 = 8 x 2 x 4
    assert scale["tokens_per_step"] == 64 * 128
    assert cfg.trainer.accumulate_grad_batches == 4, "config.yaml must show what ran"


def test_global_batch_not_divisible_names_keys_and_choices():
    with pytest.raises(ConfigError) as e:
        plan_budget(_cfg(global_batch_size=20), _world(2), block_len=128)
    msg = str(e.value)
    assert "global_batch_size=20" in msg and "data.batch_size" in msg and "16 or 32" in msg


def test_max_tokens_sets_max_steps():
    cfg = _cfg(max_tokens=1_000_000)
    scale = plan_budget(cfg, _world(1), block_len=128)
    trainer = instantiate(_trainer_cfg(1), max_steps=cfg.trainer.max_steps)  # lmforge.train builds it from cfg
    assert scale["max_steps"] == trainer.max_steps == cfg.trainer.max_steps == 977  # ceil(1e6 / (8 * 128))
    assert scale["max_tokens"] == 1_000_000


@pytest.mark.parametrize(
    "key,value", [("global_batch_size", 0), ("max_tokens", -5), ("max_tokens", 1.5), ("global_batch_size", "many")]
)
def test_bad_budget_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        check_budget_config(_cfg(**{key: value}))


@pytest.mark.parametrize("value,expected", [(False, None), (True, "blocks"), ("blocks", "blocks"), ("model", "model")])
def test_compile_choices(value, expected):
    assert ScaleOptions.from_config(_cfg(compile=value)).compile == expected


def test_bad_compile_and_checkpointing_values():
    with pytest.raises(ConfigError, match="compile='fast'"):
        ScaleOptions.from_config(_cfg(compile="fast"))
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        ScaleOptions.from_config(_cfg(activation_checkpointing="yes"))


def _tiny_gpt(seed: int = 0) -> GPT:
    with torch.device("meta"):
        net = GPT(vocab_size=64, max_seq_len=16, n_layer=2, n_head=2, d_model=16)
    materialize(net, torch.device("cpu"), seed)
    return net


def test_activation_checkpointing_keeps_loss_gradients_and_names():
    plain, checkpointed = _tiny_gpt(), _tiny_gpt()
    names = [n for n, _ in checkpointed.named_parameters()]
    checkpoint_blocks(transformer_blocks(checkpointed))
    assert [n for n, _ in checkpointed.named_parameters()] == names, "checkpoints must not depend on the option"
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for net in (plain, checkpointed):
        loss = net(ids).logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (_, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_transformer_blocks_seam():
    assert len(transformer_blocks(_tiny_gpt())) == 2
    t5 = T5(vocab_size=32, d_model=8, d_kv=4, d_ff=16, n_layer=2, n_decoder_layer=3, n_head=2)
    assert transformer_blocks(t5) == [*t5.encoder.blocks, *t5.decoder.blocks]
    with pytest.raises(ConfigError, match="transformer blocks"):
        transformer_blocks(torch.nn.Linear(2, 2))


def test_seeded_init_is_reproducible_and_seed_dependent():
    a, b, c = _tiny_gpt(0), _tiny_gpt(0), _tiny_gpt(1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.wte.weight, c.wte.weight)
    assert a.lm_head.weight is a.wte.weight


def test_slurm_launcher_asks_one_task_per_device_on_each_node():
    """Lightning's SLURMEnvironment needs ntasks-per-node = trainer.devices, over trainer.num_nodes nodes."""
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=fsdp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu"
