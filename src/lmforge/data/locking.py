"""Cross-process build-once helpers for caches.

Several processes may want the same cache entry at once: the ranks of a DDP run, or the
jobs of a local multirun. The first to take the lock builds into a temporary folder and
renames it into place; the others wait on the lock, then find the finished entry.
A crash mid-build leaves only a temporary folder, never a half-written entry.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(entry: Path, build: Callable[[Path], None]) -> Path:
    """Return `entry`, creating it with `build(tmp_dir)` if it does not exist yet.

    `build` writes everything into the empty `tmp_dir` it is given; the folder is renamed
    to `entry` only when `build` returns, so readers never see a partial entry.
    """
    if entry.is_dir():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(entry.parent / f".{entry.name}.lock"):
        if entry.is_dir():  # built by another process while we waited
            return entry
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            build(tmp)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
