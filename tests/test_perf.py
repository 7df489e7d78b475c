"""Peak FLOP/s for MFU (lmforge.perf): the table by device and dtype, the CPU estimate, the override."""

from __future__ import annotations

import pytest
import torch

from lmforge import hardware
from lmforge.perf import matmul_dtype, memory_gb, resolve_peak

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_cpu_peak_is_estimated_from_this_machine():
    peak = resolve_peak(CPU, "32-true")
    assert peak.source == "lmforge.hardware" and peak.device_key == "cpu" and peak.dtype == "fp32"
    assert peak.flops == pytest.approx(hardware.cpu_peak_flops("fp32"))
    assert 1e9 < peak.flops < 1e15  # a CPU: more than a GFLOP/s, less than a PFLOP/s
    assert resolve_peak(CPU, "bf16-mixed").dtype == "bf16"


@pytest.mark.parametrize(
    "name, precision, key, dtype",
    [
        ("NVIDIA H200", "bf16-mixed", "h200", "bf16"),  # Lightning's table has no name that matches this
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", "h100-sxm", "bf16"),
        ("NVIDIA H100 NVL", "16-mixed", "h100-nvl", "fp16"),
        ("NVIDIA A100-SXM4-80GB", "32-true", "a100-sxm", "tf32"),  # fp32 matmuls run as TF32 unless "highest"
        ("NVIDIA L4", "bf16-true", "l4", "bf16"),
        ("NVIDIA L40S", "bf16-mixed", "l40s", "bf16"),
    ],
)
def test_gpu_peaks_come_from_the_table_by_name_and_dtype(name, precision, key, dtype):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        peak = resolve_peak(CUDA, precision, name=name)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert (peak.device_key, peak.dtype, peak.source) == (key, dtype, "lmforge.hardware")
    assert peak.flops == hardware.peak_flops(key, dtype)


def test_h200_bf16_peak_is_the_datasheet_dense_figure():
    assert resolve_peak(CUDA, "bf16-mixed", name="NVIDIA H200").flops == pytest.approx(989.5e12)


def test_config_override_wins():
    peak = resolve_peak(CPU, "32-true", override=1.5e12)
    assert peak.flops == 1.5e12 and peak.source == "config"


def test_fp32_is_fp32_when_torch_is_told_highest():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        assert matmul_dtype("32-true", CUDA) == "fp32"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert matmul_dtype("64-true", CPU) is None  # no table lists fp64: MFU is then not reported


def test_memory_is_the_process_peak():
    before = memory_gb(CPU)
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert memory_gb(CPU) >= before > 0
    del block
