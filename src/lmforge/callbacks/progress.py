"""Lightning's RichProgressBar, with short metric names and a step-based description.

Shown: `loss` (train/loss), `val` (val/loss), `tok/s` (perf/tokens_per_sec), plus elapsed and
remaining time. Lightning's own bar would say "Epoch 0/-2" for step-based training
(max_epochs=-1) and show the logger version; neither helps.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar

SHORT_NAMES = {"train/loss": "loss", "val/loss": "val", "perf/tokens_per_sec": "tok/s"}


class RunProgressBar(RichProgressBar):
    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        out = {}
        for key, value in items.items():
            short = SHORT_NAMES.get(key, key)
            out[short] = f"{value:,.0f}" if short == "tok/s" and isinstance(value, float) else value
        return out

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs in (None, -1):  # training is counted in steps
            return f"{'Train':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)
