"""What every objective shares: optimisation, token accounting, loss logging, checkpoint metadata.

An objective subclasses `LMObjective` and provides:
  special_tokens   roles -> token strings its examples need (`eos` separates documents)
  batch_builder()  how examples are built from blocks of the token stream
  net_token_ids()  token ids the net's config takes from the tokenizer (e.g. its padding id)
  loss(batch)      (mean loss, number of target tokens) for a batch
and may extend `eval_step` / `on_eval_epoch_end` with metrics of its own: they serve validation and test alike.
  sample_texts()   a few generations or predictions to show people what the model learned
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from lmforge.errors import LmforgeError
from lmforge.log_steps import is_log_step
from lmforge.parallel.pipeline import pipeline_strategy, share_step_progress
from lmforge.parallel.tensor import data_parallel_size, grad_norm
from lmforge.parallel.wrap import ScaleOptions
from lmforge.protocols import Net


class LMObjective(L.LightningModule):
    name: ClassVar[str] = "base"
    special_tokens: ClassVar[dict[str, str]] = {}
    # What the objective logs, by name: a callback's `monitor` is checked against these before any compute (a typo
    # would otherwise fail after the first validation). Objectives that log more extend the tuple.
    logged_metrics: ClassVar[tuple[str, ...]] = ("train/loss", "val/loss", "val/ppl")

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        init_from: str | None = None,
        scale_options: ScaleOptions | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.net = net
        self.init_from = init_from  # the HF folder lmforge.train loaded `net` from (model.init_from), if any
        # No save_hyperparameters: the optimizer/scheduler are Hydra partials that torch.load(weights_only)
        # refuses. Checkpoints instead carry plain dicts (see on_save_checkpoint): the net's config, so
        # exports can rebuild the architecture, and the run's resolved config (lmforge.train passes it).
        self.run_config = run_config
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_loss = MeanMetric()
        self.tokens_seen = 0  # input tokens consumed in training, summed over ranks
        self.scale_options = scale_options or ScaleOptions()  # compile, activation checkpointing, init seed
        self.configured_for_scale = False  # parallel/wrap.py applied scale_options (Lightning asks for fit and again)
        self._nonfinite_loss: torch.Tensor | None = None  # on the device: a non-finite loss since the last check

    # -- to be provided by each objective --
    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None):
        raise NotImplementedError

    @classmethod
    def net_token_ids(cls, special_ids: dict[str, int]) -> dict[str, int]:
        """model.net.* keys lmforge.train fills from the tokenizer's special ids (e.g. pad_token_id)."""
        return {}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample_texts(self, tokenizer, **kwargs) -> list[str]:
        return []

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Input tokens of a batch, for tokens_seen: from shapes only (no device sync). A padded batch's builder
        may count its real tokens on the host and pass them as `num_tokens` (objectives/sft.py)."""
        return batch["input_ids"].numel()

    # -- training --
    def configure_model(self) -> None:
        # Activation checkpointing, torch.compile, FSDP2 sharding per transformer block, meta-device materialisation.
        from lmforge.parallel.wrap import configure_model

        configure_model(self)

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to optimise and its parts to log beside train/loss (e.g. MLM + NSP: train/mlm_loss, ...)."""
        return self.loss(batch)[0], {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pipeline = pipeline_strategy(self._trainer)
        parts: dict[str, torch.Tensor] = {}
        if pipeline is not None:  # trainer=pp: the schedule runs forward and backward (lmforge/parallel/pipeline.py)
            loss = pipeline.forward_backward(self, batch, self.trainer.accumulate_grad_batches)
        else:
            loss, parts = self.training_loss(batch)
        self._stop_if_loss_diverged(loss)
        # shapes only, no device sync; a tensor-parallel group shares one batch, counted once
        self.tokens_seen += self.batch_tokens(batch) * data_parallel_size(self.trainer)
        # Logged only in the steps whose metrics Lightning writes: in the others it would throw the values away, but
        # each self.log still costs ~0.1-1 ms of Python (it walks its result's state to move it to the loss's
        # device), as much as a small model's forward. Not prog_bar: Lightning turns progress-bar values into floats
        # after every batch, a device sync; the progress bar reads train/loss itself (callbacks/progress.py).
        if self._at_log_step():
            self.log("train/loss", loss)
            for name, value in parts.items():
                self.log(name, value)
            self.log("lr", self._current_lr())
        if pipeline is not None:  # manual optimisation: clip over all stages, step the optimizer and the schedule
            pipeline.after_batch(self)
        return loss

    # -- evaluation: validation and test share one implementation; an objective extends eval_step and
    # on_eval_epoch_end (not validation_step), and its metrics are logged as val/* or test/* by stage --
    def eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        pipeline = pipeline_strategy(self._trainer)
        # trainer=pp: the stages' forwards in turn, the last stage's loss on every rank
        loss, n = pipeline.eval_loss(self, batch) if pipeline is not None else self.loss(batch)
        self.val_loss.update(loss, n)  # one accumulator: validation and test never run at once

    def on_eval_epoch_end(self, stage: str) -> None:
        mean = self.val_loss.compute()  # token-weighted, synced across ranks by torchmetrics
        self.val_loss.reset()
        self.log(f"{stage}/loss", mean, prog_bar=True, sync_dist=False)
        self.log(f"{stage}/ppl", torch.exp(mean.clamp(max=50)), sync_dist=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self.on_eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self.on_eval_epoch_end("test")

    def _at_log_step(self) -> bool:
        """True in the optimizer step whose metrics Lightning writes to the loggers: its own rule, `(steps done + 1)
        % trainer.log_every_n_steps == 0` (steps done is the fit loop's `_batches_that_stepped`, which is
        `global_step` with one optimizer); and in the run's last step, whose loss summary.json reports and whose
        finiteness is checked before the run counts as finished."""
        step = self.trainer.global_step + 1
        return is_log_step(self.trainer, step) or step == self.trainer.max_steps

    def _stop_if_loss_diverged(self, loss: torch.Tensor) -> None:
        # Reading the loss on the host waits for the device, so it is read only at logging steps (when Lightning
        # reads the logged metrics anyway). A non-finite loss in between is remembered on the device, so none goes
        # unnoticed; the run stops at most log_every_n_steps steps after it, keeping the checkpoints saved before.
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite_loss = bad if self._nonfinite_loss is None else self._nonfinite_loss | bad
        if not self._at_log_step():
            return
        seen, self._nonfinite_loss = bool(self._nonfinite_loss), None
        if seen:
            value = loss.item()
            when = f"{value} at step" if not math.isfinite(value) else "non-finite before step"
            raise LmforgeError(
                f"train/loss became {when} {self.global_step}. Checkpoints saved so far are kept "
                f"in the run folder. Lower model.optimizer.lr (now {self._peak_lr()}), keep gradient clipping on "
                "(trainer.gradient_clip_val), or use a wider precision (trainer.precision=32-true)."
            )

    def on_before_optimizer_step(self, optimizer) -> None:
        # Norm before clipping: what the optimizer was given. A pass over every gradient, so it is computed only
        # in the steps whose metrics Lightning writes (trainer.log_every_n_steps), for dashboards.
        if not self._at_log_step():
            return
        pipeline = pipeline_strategy(self._trainer)
        if pipeline is not None:  # the norm over all stages, computed for clipping before this hook
            if pipeline.last_grad_norm is not None:
                self.log("grad_norm", pipeline.last_grad_norm)
            return
        grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("grad_norm", grad_norm(grads))  # FSDP/TP: DTensors, on one or two meshes

    # -- optimisation --
    def configure_optimizers(self) -> Any:  # Lightning's OptimizerLRSchedulerConfig, as a plain dict
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in self.net.parameters():
            if p.requires_grad:
                # Matrices (linear and embedding weights) decay; biases and norm gains do not.
                (decay if p.dim() >= 2 else no_decay).append(p)
        wd = self.optimizer_factory.keywords.get("weight_decay", 0.0)
        optimizer = self.optimizer_factory(
            [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=self._total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches)

    def _peak_lr(self) -> float:
        return self.optimizer_factory.keywords.get("lr", float("nan"))

    def _current_lr(self) -> float:
        opts = self.trainer.optimizers
        return opts[0].param_groups[0]["lr"] if opts else self._peak_lr()

    # -- checkpoints carry what they need to be exported and resumed --
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from lmforge.checkpoints import FORMAT

        checkpoint["lmforge"] = {
            "format": FORMAT,
            "objective": self.name,
            "net_class": net_class_path(self.net),
            "net_config": cast(Net, self.net).config_dict(),
            "tokens_seen": self.tokens_seen,
            "config": self.run_config,
            "init_from": self.init_from,
        }
        if pipeline_strategy(self._trainer) is not None:  # manual optimisation: its step count for every loop
            share_step_progress(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = checkpoint.get("lmforge", {}).get("tokens_seen", 0)
        if pipeline_strategy(self._trainer) is not None:  # a checkpoint of automatic optimisation: its step count
            share_step_progress(checkpoint)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


def net_class_path(net: nn.Module) -> str:
    """The import path of the net's class. FSDP2's fully_shard swaps a module's class for a generated
    subclass (FSDP<Name>, not importable): record the first class of the MRO that can be imported back."""
    cls = next(
        (c for c in type(net).__mro__ if "<" not in c.__qualname__ and not c.__name__.startswith("FSDP")), type(net)
    )
    return f"{cls.__module__}.{cls.__qualname__}"
