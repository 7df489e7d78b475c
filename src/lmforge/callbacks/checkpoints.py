"""A run's checkpoints: `best.ckpt` follows val/loss, `last.ckpt` is always the newest state.

Lightning's ModelCheckpoint with `save_last=True` writes last.ckpt only when it writes a top-k checkpoint, so
on a val/loss plateau last.ckpt stood still: a crash lost everything since the last improvement, and resuming a
finished run restarted from an earlier step. Here the best checkpoint is Lightning's (this class is a
ModelCheckpoint: monitor, mode, save_top_k, filename as before), and the latest state runs on its own clock:

  every_n_steps  every N optimizer steps, `step-<N>.ckpt` is written and `last.ckpt` made to be it
  keep_last      how many `step-*.ckpt` are kept, oldest removed first (0: none, only last.ckpt)
  end of fit     last.ckpt at the final step, whether or not val/loss improved
  a new best     last.ckpt becomes best.ckpt too (never older than it)
  on request     `save_latest` (the preemption callback calls it when a signal arrives)

A single-file last.ckpt is a hard link to the newest step file (no second write), replaced by renaming; a sharded
checkpoint (a folder) is published by renaming a symlink `last.ckpt -> step-<N>.ckpt`. Either way last.ckpt is at
every moment a complete checkpoint, the previous one until the new one is fully written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lmforge.checkpoint_io import STAGED_MARK, TMP_MARK, clean_orphans, fsync_folder, swap_in_folder

LAST = "last.ckpt"
STEP_PREFIX = "step-"


def step_of(path: Path) -> int | None:
    """N of `step-<N>.ckpt`, None for other names."""
    stem = path.name.removesuffix(".ckpt")
    if not (path.name.endswith(".ckpt") and stem.startswith(STEP_PREFIX)):
        return None
    number = stem.removeprefix(STEP_PREFIX)
    return int(number) if number.isdigit() else None


class RunCheckpoints(ModelCheckpoint):
    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        *,
        every_n_steps: int | None = None,
        keep_last: int = 1,
        save_last: bool = True,
        **kwargs: Any,
    ):
        # Lightning's own last.ckpt (saved with each top-k checkpoint) is replaced by the clock below.
        super().__init__(dirpath=dirpath, filename=filename, save_last=False, **kwargs)
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.model_checkpoint.every_n_steps={every_n_steps}: a positive step count or null")
        if keep_last < 0:
            raise ValueError(f"callbacks.model_checkpoint.keep_last={keep_last}: 0 or more")
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.keeps_latest = save_last
        self.latest_step: int | None = None  # the step of the newest last.ckpt this run wrote

    @property
    def folder(self) -> Path:
        if self.dirpath is None:
            raise RuntimeError("RunCheckpoints has no folder before setup")
        return Path(self.dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.folder.is_dir():
            clean_orphans(self.folder)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Lightning's save of best.ckpt. A sharded one is a folder that torch distributed checkpointing would
        rewrite in place (a kill mid-save would leave shards of two steps): it is written beside the old one and
        swapped in once every rank has written its shards."""
        final = Path(filepath)
        if not _sharded(trainer) or not final.exists():
            super()._save_checkpoint(trainer, filepath)
            return
        staged = final.with_name(f"{final.name}{STAGED_MARK}{trainer.global_step}")
        super()._save_checkpoint(trainer, str(staged))
        trainer.strategy.barrier()  # every rank's shards are in `staged`
        if trainer.is_global_zero:
            swap_in_folder(staged, final)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save_latest(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A new best checkpoint is also the newest state: last.ckpt becomes it (a link, not a second write), so
        last.ckpt is never older than best.ckpt, also before the clock's first tick."""
        super().on_validation_end(trainer, pl_module)
        if not self.keeps_latest or self.latest_step == trainer.global_step:
            return
        if self._last_global_step_saved != trainer.global_step or not self.best_model_path:
            return
        if _sharded(trainer):  # a folder DCP rewrites in place: publish a copy of its own
            self.save_latest(trainer)
            return
        if trainer.is_global_zero:
            _publish(Path(self.best_model_path), self.folder / LAST, link_folder=False)
        trainer.strategy.barrier()
        self.latest_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.save_latest(trainer)

    def save_latest(self, trainer: L.Trainer) -> Path | None:
        """Write the current state as last.ckpt (and a step checkpoint when keep_last > 0); on every rank.
        Once per step: a second call at the same step returns the checkpoint already written."""
        if not self.keeps_latest or trainer.global_step == 0 or trainer.sanity_checking:
            return None
        last = self.folder / LAST
        if self.latest_step == trainer.global_step:
            return last
        sharded = _sharded(trainer)
        if self.keep_last == 0 and not sharded:
            # atomic through the CheckpointIO plugin (lmforge/checkpoint_io.py); the full state, to resume from
            trainer.save_checkpoint(last, weights_only=self.save_weights_only)
        else:
            step_path = self.folder / f"{STEP_PREFIX}{trainer.global_step}.ckpt"
            trainer.save_checkpoint(step_path, weights_only=self.save_weights_only)
            if trainer.is_global_zero:
                _publish(step_path, last, link_folder=sharded)
                self._rotate(trainer, keep=max(self.keep_last, 1 if sharded else 0), current=step_path)
            trainer.strategy.barrier()
        self.latest_step = trainer.global_step
        return last

    def _rotate(self, trainer: L.Trainer, keep: int, current: Path) -> None:
        """Remove all but the newest `keep` step checkpoints; never the one this run resumed from."""
        steps = sorted((p for p in self.folder.iterdir() if step_of(p) is not None), key=lambda p: step_of(p) or 0)
        resumed_from = Path(trainer.ckpt_path).resolve() if trainer.ckpt_path else None
        for old in steps[: max(len(steps) - keep, 0)]:
            if old != current and old.resolve() != resumed_from:
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def _sharded(trainer: L.Trainer) -> bool:
    """Whether the strategy writes a checkpoint as a folder of shards (FSDP's distributed checkpoint)."""
    return bool(getattr(trainer.strategy, "_save_distributed_checkpoint", False))


def _publish(source: Path, last: Path, link_folder: bool) -> None:
    """Make `last` be `source` in one rename: a hard link to a file (a copy where links are not allowed), a
    relative symlink to a folder."""
    tmp = last.with_name(f"{last.name}{TMP_MARK}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    if link_folder:
        tmp.symlink_to(source.name)
        if last.is_dir() and not last.is_symlink():  # a sharded last.ckpt of an older run: a real folder
            shutil.rmtree(last)
    else:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    os.replace(tmp, last)
    fsync_folder(last.parent)
