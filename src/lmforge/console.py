"""Messages for the user: printed, and kept in the run's train.log. The one output channel of a run.

Hydra's job logging writes the root logger to train.log only (the console belongs to Lightning's
own handler, so nothing is shown twice); ``say`` prints to the console and logs to that file.

Only global rank 0 speaks, unless asked (`all_ranks=True`): under DDP/FSDP every rank runs the same code, and a
message printed once per process would be shown N times. The rank is Lightning's (`rank_zero_only.rank`): read
from the launcher's environment at import, and set again by the strategy once the processes are known.
"""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger("lmforge")


def is_global_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def say(message: str, all_ranks: bool = False) -> None:
    if not (all_ranks or is_global_zero()):
        return
    print(message)
    log.info(message.strip())
