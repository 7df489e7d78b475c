"""A bench-only Lightning callback: steady-state training throughput, timed on global rank 0 inside the run.

Added to a run with `+callbacks.step_timer._target_=step_timer.StepTimer` (bench/ on PYTHONPATH). It skips the
first `skip` optimizer steps (process start-up, first allocations, lazy initialisation), then writes
`step_timer.json` (tokens/s over the remaining steps) into the run folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class StepTimer(L.Callback):
    def __init__(self, output_dir: str, tokens_per_step: int, skip: int = 3):
        self.output_dir, self.tokens_per_step, self.skip = Path(output_dir), tokens_per_step, skip
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.times.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or len(self.times) <= self.skip + 1:
            return
        timed = self.times[self.skip :]
        seconds = timed[-1] - timed[0]
        steps = len(timed) - 1
        (self.output_dir / "step_timer.json").write_text(
            json.dumps(
                {"steps_timed": steps, "seconds": seconds, "tokens_per_sec": steps * self.tokens_per_step / seconds}
            )
        )
