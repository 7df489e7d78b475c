"""Cache entries are built once, in a temporary folder renamed into place: orphans of killed builds are removed,
and a finished entry is readable by the group like any folder the user makes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lmforge.data.locking import build_once


def test_entry_has_ordinary_folder_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        entry = build_once(tmp_path / "entry", lambda tmp: (tmp / "meta.json").write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert (entry / "meta.json").read_text() == "{}"


def test_orphaned_build_folders_are_removed(tmp_path):
    orphan = tmp_path / ".entry.k1ll3d"  # what a build killed mid-way leaves
    orphan.mkdir()
    (orphan / "half.bin").write_bytes(b"\0" * 10)
    other = tmp_path / ".other.k1ll3d"  # another entry's: not ours to remove
    other.mkdir()
    build_once(tmp_path / "entry", lambda tmp: (tmp / "done").write_text("yes"))
    assert not orphan.exists() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock", ".other.k1ll3d", "entry"]


def test_a_failed_build_leaves_no_entry_and_can_be_retried(tmp_path):
    def failing(tmp: Path) -> None:
        (tmp / "part").write_text("x")
        raise RuntimeError("disk full")

    entry = tmp_path / "entry"
    try:
        build_once(entry, failing)
    except RuntimeError:
        pass
    assert [p.name for p in tmp_path.iterdir()] == [".entry.lock"]  # no entry, no temporary folder
    assert (build_once(entry, lambda tmp: (tmp / "ok").write_text("1")) / "ok").read_text() == "1"
