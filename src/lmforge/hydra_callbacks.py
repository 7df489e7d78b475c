"""Hydra callbacks (conf/hydra/default.yaml `callbacks`): what must be checked before Hydra itself acts.

Hydra makes the run (or sweep) folder before lmforge's job starts, so an unwritable `hydra.run.dir` would end in
Hydra's traceback. `WritableFolders` makes the folder first and turns the failure into one message, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lmforge.errors import folder_error


class WritableFolders(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _make_or_exit(OmegaConf.select(config, "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _make_or_exit(OmegaConf.select(config, "hydra.sweep.dir"))


def _make_or_exit(folder: str | None) -> None:
    if not folder:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error = folder_error(e)
        if error is None:
            raise
        print(f"\nerror: {error}", file=sys.stderr)
        sys.exit(2)
