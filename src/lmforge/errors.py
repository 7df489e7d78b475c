"""Errors caused by the user's config or data, as opposed to bugs.

`train.py` prints these as one clear message (no traceback) and exits with status 2.
Every message names the key or file, the bad value, and what would be accepted.
"""

import errno


class LmforgeError(Exception):
    """A problem the user can fix: bad config value, missing or malformed data."""


class ConfigError(LmforgeError, ValueError):
    pass


class DataError(LmforgeError):
    pass


class FolderError(LmforgeError):
    """A folder the run must write (its run folder, the data cache) cannot be written."""


# errno values that mean "this path cannot be written here", as opposed to a bug
_FOLDER_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "a read-only filesystem",
    errno.ENOTDIR: "a file is in the way of a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "over the disk quota",
}


def folder_error(e: BaseException) -> FolderError | None:
    """The user-facing message for an OSError writing a run or cache folder; None for other errors."""
    if not isinstance(e, OSError) or e.errno not in _FOLDER_ERRNOS:
        return None
    return FolderError(
        f"cannot write {e.filename or 'a file'} ({_FOLDER_ERRNOS[e.errno]}). Runs write to paths.log_dir "
        "(LMFORGE_LOG_DIR, or hydra.run.dir / hydra.sweep.dir) and caches to paths.cache_dir (LMFORGE_CACHE_DIR): "
        "point them at folders you can write. Nothing already saved was changed."
    )
