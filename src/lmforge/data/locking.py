"""Cross-process build-once helpers for caches.

Several processes may want the same cache entry at once: the ranks of a DDP run, or the
jobs of a local multirun. The first to take the lock builds into a temporary folder and
renames it into place; the others wait on the lock, then find the finished entry.
A crash mid-build leaves only a temporary folder, never a half-written entry; the next build of that entry
removes it. Entries get the permissions of an ordinary folder (the umask's), so a shared cache stays readable by
the group, not 0700 as a temporary folder is made.
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
        remove_orphans(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            build(tmp)
            tmp.chmod(0o777 & ~current_umask())
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def remove_orphans(entry: Path) -> None:
    """Temporary build folders of `entry` left by killed processes. Only the holder of the entry's lock builds,
    so under the lock every such folder is an orphan."""
    for orphan in entry.parent.glob(f".{entry.name}.*"):
        if orphan.is_dir():
            shutil.rmtree(orphan, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
