"""Messages for the user: printed, and kept in the run's train.log.

Hydra's job logging writes the root logger to train.log only (the console belongs to Lightning's
own handler, so nothing is shown twice); ``say`` prints to the console and logs to that file.
"""

from __future__ import annotations

import logging

log = logging.getLogger("lmforge")


def say(message: str) -> None:
    print(message)
    log.info(message.strip())
