"""The world size of the Trainer that `cfg.trainer` describes, known before that Trainer is built.

The token budget (lmforge.budget) turns global_batch_size and max_tokens into gradient accumulation and a step
count, and both depend on the number of data-parallel processes. They are Trainer arguments: Lightning has no
public way to change max_steps once the Trainer exists. So the world size is resolved first, by the same code the
Trainer runs first in its constructor (Lightning's accelerator connector: accelerator, devices, num_nodes,
strategy, cluster environment such as torchrun or SLURM), and lmforge.train checks that the Trainer agrees.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

# The Trainer arguments that decide the processes (Trainer.__init__ passes these to its accelerator connector).
_CONNECTOR_ARGS = ("devices", "num_nodes", "accelerator", "strategy", "plugins", "precision", "sync_batchnorm")


def planned_world_size(trainer_cfg: DictConfig) -> int:
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    kwargs: dict[str, Any] = {}
    for key in _CONNECTOR_ARGS:
        if trainer_cfg.get(key) is not None:
            value = trainer_cfg[key]
            # a strategy given by _target_ (trainer=fsdp) is built here too: a separate instance, dropped after
            kwargs[key] = instantiate(value) if isinstance(value, DictConfig) else value
    connector = _AcceleratorConnector(**kwargs)
    return int(getattr(connector.strategy, "world_size", 1))  # Trainer.world_size reads it the same way
