"""A bench-only Lightning callback: steady-state training throughput, timed on global rank 0 inside the run.

Added to a run with `+callbacks.step_timer._target_=step_timer.StepTimer` (bench/ on PYTHONPATH). It skips the
first `skip` optimizer steps (process start-up, first allocations, lazy initialisation), then writes
`step_timer.json` into the run folder: tokens/s over the remaining steps, and every step's wall and CPU seconds
(the process's CPU time: on a shared machine it grows with the work done, not with the waiting for a core).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


def clocks() -> tuple[float, float]:
    """(wall, process CPU) seconds: what both sides of a comparison read at the end of every optimizer step."""
    return time.perf_counter(), time.process_time()


def per_step(marks: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Each step's wall and CPU seconds, from the clocks read at the end of consecutive steps."""
    return {
        "step_wall_s": [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)],
        "step_cpu_s": [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)],
    }


class StepTimer(L.Callback):
    def __init__(self, output_dir: str, tokens_per_step: int, skip: int = 3):
        self.output_dir, self.tokens_per_step, self.skip = Path(output_dir), tokens_per_step, skip
        self.marks: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.marks.append(clocks())

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or len(self.marks) <= self.skip + 1:
            return
        timed = self.marks[self.skip :]
        seconds = timed[-1][0] - timed[0][0]
        steps = len(timed) - 1
        (self.output_dir / "step_timer.json").write_text(
            json.dumps(
                {
                    "steps_timed": steps,
                    "seconds": seconds,
                    "tokens_per_sec": steps * self.tokens_per_step / seconds,
                    **per_step(timed),
                }
            )
        )
