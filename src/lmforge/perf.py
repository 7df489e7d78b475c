"""What one device can do and what a run uses of it: peak FLOP/s for MFU, and peak memory.

Peak FLOP/s, first match wins:
  1. the config (`callbacks.throughput.peak_flops`): for hardware we do not know, or a measured peak;
  2. lmforge's accelerator table / CPU estimate (`lmforge.hardware`), which knows the H200 and CPUs;
  3. Lightning's table (`get_available_flops`), which knows some cards ours does not (RTX, A6000, ...).
None when all three are silent: MFU is then not reported rather than guessed.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

import torch

from lmforge import hardware

# The metrics the throughput callback logs, and how a run's W&B summary shows each.
PERF_METRICS = {
    "perf/tokens_per_sec": "mean",
    "perf/samples_per_sec": "mean",
    "perf/step_time_s": "mean",
    "perf/flops_per_sec": "mean",
    "perf/mfu": "mean",
    "perf/device/tokens_per_sec": "mean",
    "perf/device/samples_per_sec": "mean",
    "perf/device/flops_per_sec": "mean",
    "perf/memory_gb": "max",
}


@dataclass(frozen=True)
class DevicePeak:
    device_name: str  # "NVIDIA H100 80GB HBM3", "AMD EPYC 9B14", ...
    device_key: str | None  # key in lmforge.hardware's table, "cpu", or None
    dtype: str  # the dtype matmuls run in: fp32, tf32, bf16, fp16, fp8
    flops: float | None  # peak dense FLOP/s of one device in that dtype
    source: str  # "config", "lmforge.hardware", "lightning" or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return str(device)


def matmul_dtype(precision: str, device: torch.device) -> str | None:
    """The dtype a Lightning precision setting runs matmuls in; fp32 on CUDA is TF32 when torch allows it."""
    try:
        dtype = hardware.normalize_dtype(precision)
    except ValueError:  # 64-true and other settings no table lists
        return None
    if dtype == "fp32" and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return dtype


def resolve_peak(
    device: torch.device, precision: str, override: float | None = None, name: str | None = None
) -> DevicePeak:
    """Peak FLOP/s of one `device` under a Lightning `precision`; `name` stands in for the device's own."""
    name = name or device_name(device)
    dtype = matmul_dtype(precision, device)
    if override:
        return DevicePeak(name, None, dtype or precision, float(override), "config")
    key = "cpu" if device.type == "cpu" else hardware.cuda_device_name_to_key(name) if device.type == "cuda" else None
    if key and dtype:
        try:
            return DevicePeak(name, key, dtype, hardware.peak_flops(key, dtype), "lmforge.hardware")
        except ValueError:  # a chip with no fast path for this dtype, or a CPU clock we cannot read
            pass
    if device.type == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        torch_dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
            dtype or ""
        )
        flops = get_available_flops(device, torch_dtype) if torch_dtype is not None else None
        if flops:
            return DevicePeak(name, key, dtype or precision, float(flops), "lightning")
    return DevicePeak(name, key, dtype or precision, None, "unknown")


def memory_gb(device: torch.device) -> float:
    """Peak memory so far: the CUDA caching allocator's max allocated, or this process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource
    except ImportError:  # Windows: current RSS instead of the peak
        import psutil

        return psutil.Process().memory_info().rss / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9  # bytes on macOS, KiB on Linux
