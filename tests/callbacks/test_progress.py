"""The progress bar counts the run's optimizer steps (global_step of max_steps), not the batches of an epoch."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lmforge.callbacks.progress import RunProgressBar


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, i):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Watch(L.Callback):
    """What the bar shows after each batch: (completed, total) of the train task, beside global_step."""

    def __init__(self, bar: RunProgressBar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, *args):
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.seen.append((task.completed, task.total, trainer.global_step))


def fit(tmp_path, max_steps: int, ckpt_path=None) -> list:
    bar = RunProgressBar(leave=False)
    watch = Watch(bar)  # after the bar in the list: it sees the bar's update of this batch
    data = DataLoader(TensorDataset(torch.randn(10, 4), torch.randn(10, 1)), batch_size=2)  # 5 batches an epoch
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accumulate_grad_batches=2,
        callbacks=[bar, watch, L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        logger=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), data, ckpt_path=ckpt_path)
    return watch.seen


def test_the_bar_counts_optimizer_steps_of_the_run_across_epochs_and_a_resume(tmp_path):
    seen = fit(tmp_path, max_steps=6)  # about two epochs of 5 batches, two batches a step
    assert all(total == 6 and completed == step for completed, total, step in seen)
    assert seen[-1][0] == 6 and len(seen) > 6  # Lightning also steps at the end of an epoch, whatever accumulates

    resumed = fit(tmp_path, max_steps=9, ckpt_path=str(tmp_path / "last.ckpt"))
    assert all(total == 9 and completed == step for completed, total, step in resumed)
    assert resumed[0][0] in (6, 7) and resumed[-1][0] == 9  # starts from the checkpoint's step, not from 0
