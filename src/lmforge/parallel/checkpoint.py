"""Consolidate a sharded checkpoint folder (`trainer=fsdp` and `trainer=tp` save one shard per rank) into a single
file:

    python -m lmforge.parallel.checkpoint <run>/checkpoints/last.ckpt [out.ckpt]

A sharded checkpoint resumes as it is under the FSDP strategy on any layout (ckpt_path=<folder>: `trainer=fsdp`
or `trainer=tp`, any number of processes; torch distributed checkpointing reshards it on load). The consolidated
file holds the full weights (`state_dict`), lmforge's metadata (`lmforge`: net class and config, run config) for
export and inference, and the rest of the training state (optimizer, schedule, loops, callbacks), so it also
resumes on one process or under DDP (ckpt_path=<file>), which cannot read a folder.

The optimizer state of a sharded checkpoint is keyed by parameter name (torch's get_optimizer_state_dict); a
plain torch optimizer's state is keyed by the parameter's position in its groups. The consolidated file has the
latter, numbered in the saved groups' order, which is the order the objective's configure_optimizers builds them in
on any strategy.

Why not Lightning's `consolidate_checkpoint` CLI: it expects FSDP1's layout (a "model" key) and fails on
ModelParallelStrategy's ("state_dict").
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError, LmforgeError

_OPTIMIZER_KEY = re.compile(r"optimizer_(\d+)")  # ModelParallelStrategy's name for each optimizer's state


def consolidate(folder: str | Path, out: str | Path | None = None) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a sharded checkpoint folder; a .ckpt file is already one file.")
    out = Path(out) if out else folder.with_name(folder.name.removesuffix(".ckpt") + ".full.ckpt")
    torch.save(resumable(read_checkpoint(folder, whole=True)), out)
    return out


def resumable(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A sharded checkpoint read whole, in the layout of a one-file checkpoint of Lightning's other strategies:
    its `optimizer_<i>` entries become the `optimizer_states` list, each keyed by parameter position."""
    found = {int(m.group(1)): k for k in ckpt if (m := _OPTIMIZER_KEY.fullmatch(k))}
    out = {k: v for k, v in ckpt.items() if k not in found.values()}
    if found:
        states = [ckpt[found[i]] for i in sorted(found)]
        states = [unflattened_optimizer_state(s, ckpt) if "param_groups" not in s else s for s in states]
        out["optimizer_states"] = [positional_optimizer_state(s) for s in states]
    return out


def unflattened_optimizer_state(state: dict[str, Any], ckpt: dict[str, Any]) -> dict[str, Any]:
    """get_optimizer_state_dict's nested layout from its flattened one ("state.<name>.exp_avg",
    "param_groups.<name>.lr": trainer=pp writes it, as the stages' groups differ). The groups are the ones
    LMObjective.configure_optimizers builds on one process: the net's matrices (dim >= 2) in its parameter order,
    then the rest, each group with its parameters' hyperparameters."""
    from hydra.utils import get_class

    per_param: dict[str, dict[str, Any]] = {}
    hyper: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        kind, _, rest = key.partition(".")
        name, _, field = rest.rpartition(".")
        if kind not in ("state", "param_groups") or not name:
            raise ConfigError(f"the checkpoint's optimizer state has an entry {key!r} that is not flattened by name.")
        (per_param if kind == "state" else hyper).setdefault(name, {})[field] = value
    meta = ckpt["lmforge"]
    with torch.device("meta"):
        net = get_class(meta["net_class"])(**meta["net_config"])
    order = [(f"net.{n}", p.dim()) for n, p in net.named_parameters()]
    missing = [n for n, _ in order if n not in hyper]
    if missing:
        raise ConfigError(f"the checkpoint's optimizer state has no parameter group for {missing}.")
    groups = []
    for members in ([n for n, d in order if d >= 2], [n for n, d in order if d < 2]):
        groups.append({**hyper[members[0]], "params": members} if members else {"params": []})
    return {"state": per_param, "param_groups": groups}


def positional_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """torch.optim.Optimizer.state_dict()'s layout from get_optimizer_state_dict's: parameter names -> 0, 1, ... in
    the order the groups list them (the order Optimizer.state_dict numbers its parameters in)."""
    ids: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        groups.append({**group, "params": [ids.setdefault(name, len(ids)) for name in group["params"]]})
    missing = set(state["state"]) - set(ids)
    if missing:
        raise ConfigError(f"the checkpoint's optimizer state names parameters in none of its groups: {sorted(missing)}")
    return {"state": {ids[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmforge.parallel.checkpoint",
        description="Consolidate a sharded (trainer=fsdp or tp) checkpoint folder into one resumable, exportable file.",
    )
    parser.add_argument("folder", help="a sharded checkpoint, e.g. <run>/checkpoints/last.ckpt")
    parser.add_argument("out", nargs="?", help="output file (default: <folder without .ckpt>.full.ckpt beside it)")
    args = parser.parse_args(argv)
    try:
        out = consolidate(args.folder, args.out)
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
