"""Throughput and MFU while training: `perf/tokens_per_sec`, `perf/mfu`, `perf/step_time_s`, ...

Lightning's `Throughput` does the windowed rate arithmetic and is used here. Its callback,
`ThroughputMonitor`, is not, because it (a) finds no peak FLOP/s on CPU nor for the H200 (its
table has no such names), so it reports no MFU there; (b) counts the first steps, where
torch.compile, cuDNN autotuning and the allocator warm up; (c) counts what runs between
training steps inside fit (checkpoints, generated samples) as training time; and (d) logs under
`train|device/...` names, not ours. This callback times training steps only: it drops the first
`warmup_steps` optimizer steps and restarts its clock after every validation. It reads the clock only where
an interval closes, at the logging steps (trainer.log_every_n_steps) and the pauses: on a GPU reading it means
waiting for the device, which the steps in between never do.

Per device and in total: `perf/device/*` is what one device does, `perf/*` the sum over devices
(the per-device rate measured on this rank times the world size, as `Throughput` assumes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput

from lmforge.flops import training_flops
from lmforge.log_steps import is_log_step, write_metrics
from lmforge.parallel.tensor import model_parallel_size
from lmforge.perf import DevicePeak, memory_gb, resolve_peak


@dataclass
class _Counts:
    batches: int = 0
    samples: int = 0
    tokens: int = 0
    flops: int = 0
    steps_done: int = 0  # optimizer steps of the session at the interval's last batch

    def add(self, ids: torch.Tensor, flops: int | None) -> None:
        self.batches += 1
        self.samples += ids.shape[0]
        self.tokens += ids.numel()
        self.flops += flops or 0


class ThroughputMFU(L.Callback):
    """Log throughput, MFU and memory at every logged step; summarise the run in summary.json `perf`."""

    summary_key = "perf"

    def __init__(self, warmup_steps: int = 5, window: int = 3, peak_flops: float | None = None):
        """warmup_steps: optimizer steps left out of every figure (compile, autotune, allocator warm-up).
        window: logging points the logged rates span (at least 2: the rate over the last log_every_n_steps steps).
        peak_flops: FLOP/s of one device, to override the table / CPU estimate (MFU = achieved / peak)."""
        if warmup_steps < 0 or window < 2:
            raise ValueError(f"warmup_steps must be >= 0 and window >= 2, got {warmup_steps} and {window}")
        self.warmup_steps, self.window, self.peak_override = warmup_steps, window, peak_flops
        self.peak: DevicePeak | None = None
        self.tp = self.replicas = 1
        self._reset()

    def _reset(self) -> None:
        self.throughput: Throughput | None = None
        self.latest: dict[str, float] = {}  # the figures of the last logging step
        self._mark: float | None = None  # clock at the start of the open interval; None while paused
        self._start_step = 0
        self._warm = False  # the warm-up steps of this session are behind
        self._pending = _Counts()  # batches of the open interval, counted from shapes (no device reads)
        self._last_seen_step = -1
        self.warmup_time = 0.0
        self.time = 0.0  # timed training seconds after warm-up
        self.steps = self.batches = self.samples = self.tokens = self.flops = 0
        self.flops_known = True
        self._flops_by_shape: dict[tuple, int | None] = {}

    # -- setup --
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self.world_size = trainer.world_size
        # A tensor-parallel group or a pipeline (tp x pp ranks) processes one batch together: totals count each
        # group's batch once (x data-parallel size), and each rank is credited 1/(tp x pp) of that batch's FLOPs
        # (a pipeline stage does its blocks' share; the sum over the stages is the batch's FLOPs).
        self.tp = model_parallel_size(trainer)
        self.replicas = self.world_size // self.tp
        self.device = trainer.strategy.root_device
        self.peak = resolve_peak(self.device, str(trainer.precision), self.peak_override)
        if self.device.type == "cpu" and self.peak.source != "config" and self.peak.flops and trainer.num_devices > 1:
            # CPU "devices" are processes sharing one CPU's cores: each gets its share of the peak
            self.peak = replace(self.peak, flops=self.peak.flops / trainer.num_devices)
        self.throughput = Throughput(
            available_flops=self.peak.flops, world_size=self.world_size, window_size=self.window
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step  # a resumed run warms up again from where it resumed
        self._warm = self.warmup_steps == 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels are asynchronous: wait, or the clock lies
        return time.perf_counter()

    # -- timing: the clock is read where an interval closes (a logging step, a pause), never in the steps between,
    # where on a GPU reading it would wait for the device --
    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._mark is None:
            self._mark = self._now()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()  # validation, checkpoints and samples are not training time

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._pause()  # nor is writing a checkpoint between training steps (every_n_train_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        self._pause()

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._mark is None or self.throughput is None:
            return
        done = trainer.global_step - self._start_step
        if not self._warm:
            if done >= self.warmup_steps:  # the last warm-up step: its time is warm-up, the clock restarts
                now = self._now()
                self.warmup_time += now - self._mark
                self._mark, self._warm = now, True
            return
        flops = self._batch_flops(pl_module, batch)
        self.flops_known = self.flops_known and flops is not None
        self._pending.add(batch["input_ids"], flops)
        self._pending.steps_done = done
        stepped, self._last_seen_step = trainer.global_step != self._last_seen_step, trainer.global_step
        if stepped and is_log_step(trainer, trainer.global_step):
            interval = self._close_interval()
            self.throughput.update(
                time=self.time,
                batches=self.batches,
                samples=self.samples,
                lengths=self.tokens,
                flops=interval.flops if self.flops_known else None,  # Throughput takes the FLOPs since its last update
            )
            self._log(trainer, self.throughput.compute())

    def _batch_flops(self, pl_module: L.LightningModule, batch: Any) -> int | None:
        """This rank's share of the batch's model FLOPs. A net's count is a function of the batch's shapes (the Net
        protocol), which repeat from step to step: counted once per shape, not in Python on every step."""
        shapes = tuple((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor))
        if shapes not in self._flops_by_shape:
            flops = training_flops(getattr(pl_module, "net", pl_module), batch)
            self._flops_by_shape[shapes] = None if flops is None else flops // self.tp
        return self._flops_by_shape[shapes]

    def _close_interval(self) -> _Counts:
        """Add the open interval to the totals and start the next one now; returns the interval's counts."""
        interval, self._pending = self._pending, _Counts()
        if self._mark is None:
            return interval
        now = self._now()
        if interval.batches:
            self.time += now - self._mark
            self.batches += interval.batches
            self.samples += interval.samples
            self.tokens += interval.tokens
            self.flops += interval.flops
            self.steps = interval.steps_done - self.warmup_steps
        self._mark = now
        return interval

    def _pause(self) -> None:
        if self._warm:
            self._close_interval()
        elif self._mark is not None:
            self.warmup_time += self._now() - self._mark
        self._mark = None

    def _log(self, trainer: L.Trainer, m: dict[str, float]) -> None:
        ws, replicas, accumulate = self.world_size, self.replicas, trainer.accumulate_grad_batches
        values: dict[str, float] = {"perf/memory_gb": memory_gb(self.device)}
        if "device/samples_per_sec" in m:
            values.update(
                {
                    "perf/tokens_per_sec": m["device/items_per_sec"] * replicas,
                    "perf/samples_per_sec": m["device/samples_per_sec"] * replicas,
                    "perf/step_time_s": accumulate / m["device/batches_per_sec"],
                    "perf/device/tokens_per_sec": m["device/items_per_sec"] * replicas / ws,
                    "perf/device/samples_per_sec": m["device/samples_per_sec"] * replicas / ws,
                }
            )
        if "device/flops_per_sec" in m:
            values["perf/flops_per_sec"] = m["device/flops_per_sec"] * ws
            values["perf/device/flops_per_sec"] = m["device/flops_per_sec"]
        if "device/mfu" in m:
            values["perf/mfu"] = m["device/mfu"]
        # Host floats, written straight to the loggers at the step Lightning writes its own metrics (as the emissions
        # callback does): through self.log each would be copied to the device and walked by Lightning's result
        # collection, ~1 ms of Python apiece, 10 of them per logging step. The progress bar reads `latest`.
        self.latest = {k: float(v) for k, v in values.items()}
        write_metrics(trainer, self.latest)

    # -- summary.json --
    def summary(self) -> dict[str, Any]:
        """Whole-run figures over the timed steps after warm-up (per-device figures on this rank x world size)."""
        if self.peak is None:
            return {}
        ws = self.world_size
        out: dict[str, Any] = {
            "device": self.peak.device_name,
            "device_type": self.device.type,
            "num_devices": ws,
            "dtype": self.peak.dtype,
            "peak_flops": self.peak.flops,
            "peak_flops_source": self.peak.source,
            "memory_gb": memory_gb(self.device),
            "memory": "cuda_max_allocated" if self.device.type == "cuda" else "max_rss",
            "warmup_steps": self.warmup_steps,
            "warmup_time_s": self.warmup_time,
        }
        if self.steps <= 0 or self.time <= 0:
            return out  # the run ended within its warm-up: no figure would be honest
        out.update(
            {
                "tokens_per_sec": self.tokens * self.replicas / self.time,
                "tokens_per_sec_per_device": self.tokens * self.replicas / ws / self.time,
                "samples_per_sec": self.samples * self.replicas / self.time,
                "step_time_s": self.time / self.steps,
                "measured_steps": self.steps,
                "measured_time_s": self.time,
            }
        )
        if self.flops_known and self.flops > 0:
            out["flops_per_step"] = self.flops * ws / self.steps  # all devices, one optimizer step
            out["flops_per_sec"] = self.flops * ws / self.time
            if self.peak.flops:
                out["mfu"] = self.flops / self.time / self.peak.flops
        return out
