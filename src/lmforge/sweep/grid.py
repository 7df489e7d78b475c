"""The grid backend: every combination of the finite values in the space (choice/range), visited by
Optuna's GridSampler. Running a grid through the same Optuna study as a search keeps everything a
search has — resumption from the sqlite study, pruning on val/loss, the sweep summary — for free."""

from __future__ import annotations

import math
from typing import Any

from lmforge.sweep.space import Param


def grid_space(space: list[Param]) -> dict[str, list[Any]]:
    return {p.key: p.grid() for p in space}


def grid_size(space: list[Param]) -> int:
    return math.prod(len(v) for v in grid_space(space).values())


def make_grid_sampler(space: list[Param], seed: int):
    import optuna

    return optuna.samplers.GridSampler(grid_space(space), seed=seed)
