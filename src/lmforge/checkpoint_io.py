"""Checkpoint files are replaced atomically: a kill at any moment leaves the previous checkpoint loadable.

Lightning's TorchCheckpointIO serializes to memory and then writes through an fsspec transaction, which stages
the bytes in $TMPDIR and moves them into place on commit. When $TMPDIR is on another filesystem than the run
folder (a common cluster layout), that move is a copy into the target: a kill during it leaves a truncated
`last.ckpt`, and the good one it replaced is already gone. Here the temporary file lives in the checkpoint's own
folder, is fsynced, and is renamed over the target (rename within one filesystem is atomic), then the folder is
fsynced so the rename itself survives a power loss.

Sharded checkpoints (`trainer=fsdp`, one folder per checkpoint) are written by torch distributed checkpointing,
not through this plugin, and in place: the latest-checkpoint callback publishes those by renaming a symlink, and a
folder that is rewritten (best.ckpt) is written beside it and swapped in (`swap_in_folder`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_MARK = ".tmp-"  # `<name>.tmp-<pid>`: a file being written (or left by a killed process: see clean_orphans)
# A sharded checkpoint that replaces an existing folder (best.ckpt under FSDP) is written as `<name>.staged-<step>`
# by every rank, then swapped in by rank 0: `<name>` -> `<name>.old-<step>`, staged -> `<name>`, old removed.
STAGED_MARK, OLD_MARK = ".staged-", ".old-"


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path` through a temporary file beside it: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def swap_in_folder(staged: Path, final: Path) -> None:
    """Replace the folder `final` by the complete folder `staged`. A rename cannot replace a folder that has files,
    so the old one is renamed aside first: at every moment one complete copy exists under `final` or under
    `<final>.old-*`, which `clean_orphans` puts back if a kill came between the two renames."""
    old = final.with_name(final.name + OLD_MARK + staged.name.rsplit(STAGED_MARK, 1)[1])
    if final.is_dir() and not final.is_symlink():
        os.rename(final, old)
    os.rename(staged, final)
    fsync_folder(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def clean_orphans(folder: str | Path) -> list[Path]:
    """Remove what processes killed mid-save left behind: temporary checkpoint files of processes no longer
    running, and staged sharded folders (incomplete). A sharded checkpoint set aside by `swap_in_folder` whose
    replacement never arrived is put back."""
    removed = []
    for tmp in Path(folder).glob(f"*{TMP_MARK}*"):
        pid = tmp.name.rsplit(TMP_MARK, 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    for staged in Path(folder).glob(f"*{STAGED_MARK}*"):
        shutil.rmtree(staged, ignore_errors=True)
        removed.append(staged)
    for old in Path(folder).glob(f"*{OLD_MARK}*"):
        final = old.with_name(old.name.rsplit(OLD_MARK, 1)[0])
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        else:
            os.rename(old, final)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """The Trainer's CheckpointIO plugin (train.build_trainer): TorchCheckpointIO with atomic local saves."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote or custom: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)
