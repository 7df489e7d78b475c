"""A callback that makes training diverge on purpose: from a given step, one weight is infinite.

Used by test_bad_input.py through `+callbacks.inject_inf._target_=inject_inf.InfWeightFrom` (the test puts this
folder on the subprocess's PYTHONPATH): the run itself is the real one, only its numbers go bad.
"""

from __future__ import annotations

import lightning as L
import torch


class InfWeightFrom(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.net.parameters()).fill_(float("inf"))
