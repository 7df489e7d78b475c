"""Reading a training checkpoint, whether it is one file or a sharded folder (`trainer=fsdp` saves one shard per
rank): the one reader that export (lmforge/export.py) and consolidation (lmforge/parallel/checkpoint.py) share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.errors import ConfigError

# What a sharded checkpoint is read down to (and a consolidated file keeps). Its optimizer state is keyed by
# parameter name, which a resumed non-FSDP run could not load, so resume sharded checkpoints with trainer=fsdp.
KEEP = ("state_dict", "lmforge", "epoch", "global_step", "pytorch-lightning_version")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by lmforge as one dict of CPU tensors: a file, or a sharded folder gathered into full
    tensors (only what KEEP lists)."""
    path = Path(path)
    if path.is_dir():
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        ckpt = {k: v for k, v in _load_distributed_checkpoint(path).items() if k in KEEP}
    elif not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r}: no such file. Give a .ckpt from <run dir>/checkpoints/.")
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "lmforge" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(
            f"checkpoint {str(path)!r} was not written by lmforge (no 'lmforge' section); "
            "export checkpoints from <run dir>/checkpoints/."
        )
    return ckpt
