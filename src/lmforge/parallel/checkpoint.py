"""Consolidate a sharded checkpoint folder (`trainer=fsdp` saves one shard per rank) into a single file:

    python -m lmforge.parallel.checkpoint <run>/checkpoints/last.ckpt [out.ckpt]

A sharded checkpoint resumes as it is with `trainer=fsdp` on any world size (ckpt_path=<folder>). The consolidated
file holds the full weights (`state_dict`) and lmforge's metadata (`lmforge`: net class and config, run config) for
export and inference. Why not Lightning's `consolidate_checkpoint` CLI: it expects FSDP1's layout (a "model" key)
and fails on ModelParallelStrategy's ("state_dict").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError


def consolidate(folder: str | Path, out: str | Path | None = None) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a sharded checkpoint folder; a .ckpt file is already one file.")
    out = Path(out) if out else folder.with_name(folder.name.removesuffix(".ckpt") + ".full.ckpt")
    torch.save(read_checkpoint(folder), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Consolidate a sharded (FSDP) checkpoint folder into one file.")
    parser.add_argument("folder", help="a sharded checkpoint, e.g. <run>/checkpoints/last.ckpt")
    parser.add_argument("out", nargs="?", help="output file (default: <folder without .ckpt>.full.ckpt beside it)")
    args = parser.parse_args()
    print(f"wrote {consolidate(args.folder, args.out)}")


if __name__ == "__main__":
    main()
