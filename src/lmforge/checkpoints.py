"""Reading a training checkpoint, whether it is one file or a sharded folder (`trainer=fsdp` saves one shard per
rank): the one reader that export (lmforge/export.py), consolidation (lmforge/parallel/checkpoint.py) and the
resume check of train.py share. Every way a user's file can be wrong is one ConfigError naming the file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class

from lmforge.errors import ConfigError

# What a sharded checkpoint is read down to for export and init_from (its weights and what lmforge says of them);
# consolidation (lmforge/parallel/checkpoint.py) reads it whole, optimizer and loop state included, to resume.
KEEP = ("state_dict", "lmforge", "epoch", "global_step", "pytorch-lightning_version")
GIVE = "Give a .ckpt from <run dir>/checkpoints/ (last.ckpt: the newest state)."
# The layout of the checkpoint's "lmforge" section (objectives/base.py writes it). A reader refuses a newer one
# rather than misread it; raise it when the section changes in a way older readers would get wrong.
FORMAT = 1
SHARDED_META = "meta.pt"  # Lightning's file of the non-tensor state in a sharded folder


def read_checkpoint(path: str | Path, what: str = "checkpoint", whole: bool = False) -> dict[str, Any]:
    """A checkpoint written by lmforge as one dict of CPU tensors: a file, or a sharded folder gathered into full
    tensors (only what KEEP lists, or everything with `whole`). `what` names the path in messages (e.g.
    "ckpt_path")."""
    path = Path(path)
    if path.is_dir():
        _check_sharded_folder(path, what)
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        ckpt = {k: v for k, v in _load_distributed_checkpoint(path).items() if whole or k in KEEP}
    else:
        ckpt = _load_file(path, what)
    if "lmforge" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(
            f"{_named(what, path)} was not written by lmforge (no 'lmforge' section); "
            "export checkpoints from <run dir>/checkpoints/."
        )
    _check_format(ckpt["lmforge"], what, path)
    return ckpt


def check_resume_checkpoint(path: str | Path, objective: str, net: Mapping[str, Any]) -> dict[str, Any]:
    """Before any compute: `ckpt_path` is a checkpoint this run can resume (its objective, net family and
    dimensions match the config's `model`). A file is memory-mapped, so its tensors are not read. Returns what the
    checkpoint says of itself: `step` (its global step) and `config` (the run config it was trained with), each
    None where a sharded folder does not say without reading its shards."""
    path = Path(path).expanduser()
    if path.is_dir():  # sharded: the shards hold the tensors, meta.pt the rest (the lmforge section, the step)
        _check_sharded_folder(path, "ckpt_path")
        if not (path / SHARDED_META).is_file():
            return {"step": None, "config": None}
        ckpt = _load_file(path / SHARDED_META, "ckpt_path")
        has_state = True
    else:
        ckpt = _load_file(path, "ckpt_path", mmap=True)
        has_state = "state_dict" in ckpt
    meta = ckpt.get("lmforge")
    if not isinstance(meta, dict) or not has_state:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a training checkpoint written by lmforge. {GIVE}")
    _check_format(meta, "ckpt_path", path)
    theirs, ours = meta.get("objective"), objective
    their_net, our_net = str(meta.get("net_class")), str(net.get("_target_"))
    if theirs != ours or not _same_class(their_net, our_net):
        raise ConfigError(
            f"ckpt_path={str(path)!r} holds a {theirs} checkpoint of {their_net}; this run's model is {ours} with "
            f"{our_net}. Choose the model= the checkpoint was trained with."
        )
    differ = {
        k: (v, net[k])
        for k, v in (meta.get("net_config") or {}).items()
        if k in net and _is_dimension(k, v) and v != net[k]
    }
    if differ:
        said = ", ".join(
            f"model.net.{k}={mine} (the checkpoint has {k}={saved})" for k, (saved, mine) in differ.items()
        )
        raise ConfigError(
            f"ckpt_path={str(path)!r} holds a net of another size: {said}. Resume with the checkpoint's dimensions."
        )
    config = meta.get("config")
    return {"step": ckpt.get("global_step"), "config": config if isinstance(config, dict) else None}


def _load_file(path: Path, what: str, mmap: bool = False) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{_named(what, path)}: no such file. {GIVE}")
    if not path.is_file():
        raise ConfigError(f"{_named(what, path)} is not a file. {GIVE}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{_named(what, path)} is empty (0 bytes): its save was cut short. {GIVE}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, random bytes, a pickle of other objects: torch's many ways to say so
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds Python objects beyond tensors and plain data, which lmforge does not load"
        raise ConfigError(
            f"{_named(what, path)} is not a readable checkpoint (truncated or corrupt? {reason[:200]}). {GIVE}"
        ) from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{_named(what, path)} holds a {type(ckpt).__name__}, not a checkpoint. {GIVE}")
    return ckpt


def _check_format(meta: dict[str, Any], what: str, path: Path) -> None:
    theirs = meta.get("format", 1)  # checkpoints from before the key are format 1
    if not isinstance(theirs, int) or theirs > FORMAT:
        raise ConfigError(
            f"{_named(what, path)} was written by a newer lmforge (checkpoint format {theirs}; this one reads up to "
            f"{FORMAT}). Update lmforge (git pull && pip install -e .) to read it."
        )


def _named(what: str, path: Path) -> str:
    """`ckpt_path='x'` for the config key, `checkpoint 'x'` for a command-line argument."""
    return f"{what}={str(path)!r}" if what == "ckpt_path" else f"{what} {str(path)!r}"


def _check_sharded_folder(path: Path, what: str) -> None:
    if not (path / ".metadata").is_file():
        raise ConfigError(
            f"{_named(what, path)} is a folder but not a checkpoint (a sharded checkpoint folder, which "
            f"trainer=fsdp and trainer=tp write, has a .metadata file). {GIVE}"
        )


def _same_class(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return get_class(a) is get_class(b)
    except Exception:
        return False


def _is_dimension(key: str, value: Any) -> bool:
    """Net settings that shape the weights (layers, widths, bias on/off): the vocabulary size and token ids come
    from the tokenizer, and float rates (dropout) may change on resume."""
    if key == "vocab_size" or key.endswith("_id"):
        return False
    return isinstance(value, (int, bool, str)) and not isinstance(value, float)
