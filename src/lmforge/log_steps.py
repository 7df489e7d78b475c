"""Which optimizer steps write metrics: the one rule that the objectives, the throughput callback and the progress
bar share, so that everything read from the device (the loss for the NaN check, grad-norm, throughput timing on a
GPU, the progress bar's numbers) is read in the same steps, and the steps in between never wait for the device.

It is Lightning's rule: the step numbered N (counting from 1) writes to the loggers when N % log_every_n_steps == 0.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("lmforge")

# Lightning's log_every_n_steps when a run turns logging off (0): how often the loss is still checked for NaN.
CHECK_EVERY_WITHOUT_LOGS = 50


def log_interval(trainer: Any) -> int:
    # Lightning's logger connector sets log_every_n_steps on the Trainer; the class does not declare it
    return int(getattr(trainer, "log_every_n_steps", 0) or CHECK_EVERY_WITHOUT_LOGS)


def is_log_step(trainer: Any, step: int) -> bool:
    """Whether optimizer step number `step` (1 for the first) writes metrics. In training_step the step being
    taken is `global_step + 1`; in on_train_batch_end, after the optimizer stepped, it is `global_step`."""
    return step > 0 and step % log_interval(trainer) == 0


def write_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Write host-side figures (throughput, energy) straight to the run's loggers, at the optimizer step Lightning
    writes its own metrics of that step under. Cheaper than LightningModule.log, which copies each float to the
    device and walks its result collection; for figures no callback monitors and no epoch aggregates."""
    if not getattr(trainer, "is_global_zero", True):
        return
    # Lightning numbers a step's metrics by the steps done before it (the 10th step's under 9): its fit loop's
    # counter, as its LearningRateMonitor reads it, so that one W&B / CSV row holds all of a step's figures.
    fit_loop = getattr(trainer, "fit_loop", None)
    step = getattr(getattr(fit_loop, "epoch_loop", None), "_batches_that_stepped", trainer.global_step)
    for logger in getattr(trainer, "loggers", None) or []:
        try:
            logger.log_metrics(metrics, step=step)
        except Exception as e:  # a logger's problem is not the run's: it keeps training, the other loggers write
            log.debug("could not log %s to %s: %s", sorted(metrics), type(logger).__name__, e)
