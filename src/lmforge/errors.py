"""Errors caused by the user's config or data, as opposed to bugs.

`train.py` prints these as one clear message (no traceback) and exits with status 2.
Every message names the key or file, the bad value, and what would be accepted.
"""


class LmforgeError(Exception):
    """A problem the user can fix: bad config value, missing or malformed data."""


class ConfigError(LmforgeError, ValueError):
    pass


class DataError(LmforgeError):
    pass
