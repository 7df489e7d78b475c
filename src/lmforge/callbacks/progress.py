"""Lightning's RichProgressBar, counting the run's optimizer steps, with short metric names.

Shown: `loss` (train/loss), `val` (val/loss), `tok/s` (perf/tokens_per_sec), plus elapsed and remaining time.
Lightning's own bar counts the batches of the current epoch (233/369 in a run of 800 steps over several passes of
a small corpus, and with gradient accumulation a batch is not a step), says "Epoch 0/-2" for step-based training
(max_epochs=-1) and shows the logger version. Here the bar is the run: global_step of trainer.max_steps (664/800),
across epochs and after a resume, so its remaining time is the run's. Its numbers change at the logging steps
(trainer.log_every_n_steps), when they are read from the device anyway.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar

from lmforge.log_steps import is_log_step

SHORT_NAMES = {"train/loss": "loss", "val/loss": "val", "perf/tokens_per_sec": "tok/s"}


class RunProgressBar(RichProgressBar):
    def _counts_steps(self) -> bool:
        return self.trainer.max_epochs in (None, -1) and (self.trainer.max_steps or 0) > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._counts_steps() else super().total_train_batches

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._counts_steps() and self.progress is not None and self.train_progress_bar_id is not None:
            # start from the steps already done (a resumed run, a later epoch); reset also clears rich's speed
            # samples, so a resume's jump to its step is not taken for speed
            self.progress.reset(
                self.train_progress_bar_id,
                total=trainer.max_steps,
                completed=trainer.global_step,
                description=self._get_train_description(trainer.current_epoch),
                visible=True,
            )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._counts_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # Lightning's case: resumed mid-epoch
        self._update(self.train_progress_bar_id, trainer.global_step)
        # The numbers shown are read from the device (Lightning turns logged tensors into floats): only in the steps
        # that write metrics anyway, not in every step (lmforge/log_steps.py)
        if is_log_step(trainer, trainer.global_step) or trainer.should_stop:
            self._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        # logged without prog_bar (Lightning would read those from the device after every batch): read here, in the
        # steps the bar updates its numbers
        for key in SHORT_NAMES:
            value = trainer.callback_metrics.get(key)
            if key not in items and value is not None and value.numel() == 1:
                items[key] = value.item()
        for callback in trainer.callbacks:  # figures written straight to the loggers (callbacks/throughput.py)
            for key, value in getattr(callback, "latest", {}).items():
                if key in SHORT_NAMES:
                    items[key] = value
        out = {}
        for key, value in items.items():
            short = SHORT_NAMES.get(key, key)
            out[short] = f"{value:,.0f}" if short == "tok/s" and isinstance(value, float) else value
        return out

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs in (None, -1):  # training is counted in steps
            return f"{'Train':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)
