"""Accelerator table: peak dense FLOP/s by dtype and TDP, plus a CPU peak estimate.

One table serves the pre-run emissions estimate (TDP as default power, peak FLOP/s for
accelerator-hours) and MFU (``peak_flops(device_key, dtype)``).

Numbers are the vendors' datasheet peaks for DENSE math (NVIDIA lists sparse numbers
with an asterisk; those are halved here). ``fp32`` is plain (non-tensor-core) FP32,
except on AMD Instinct where it is the FP32 matrix-core peak. A dtype missing from an
entry means the chip has no fast path for it (V100/T4 have no bf16/tf32 units).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

T = 1e12  # TFLOP/s -> FLOP/s

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")


@dataclass(frozen=True)
class Accelerator:
    key: str
    name: str
    tdp_w: float
    peak: Mapping[str, float]  # dtype -> dense FLOP/s
    aliases: tuple[str, ...] = ()
    source: str = ""
    notes: str = field(default="", compare=False)


_TABLE: tuple[Accelerator, ...] = (
    Accelerator(
        "v100",
        "NVIDIA V100 SXM2",
        300,
        {"fp32": 15.7 * T, "fp16": 125 * T},
        ("v100-sxm2", "v100-sxm", "v100-16gb", "v100-32gb", "tesla-v100"),
        "NVIDIA V100 datasheet",
    ),
    Accelerator("v100-pcie", "NVIDIA V100 PCIe", 250, {"fp32": 14 * T, "fp16": 112 * T}, (), "NVIDIA V100 datasheet"),
    Accelerator("t4", "NVIDIA T4", 70, {"fp32": 8.1 * T, "fp16": 65 * T}, ("tesla-t4",), "NVIDIA T4 datasheet"),
    Accelerator(
        "a10",
        "NVIDIA A10",
        150,
        {"fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T},
        (),
        "NVIDIA A10 datasheet",
    ),
    Accelerator(
        "a10g",
        "NVIDIA A10G (AWS)",
        300,
        {"fp32": 35 * T, "tf32": 35 * T, "bf16": 70 * T, "fp16": 70 * T},
        (),
        "AWS/NVIDIA figures; NVIDIA publishes no A10G datasheet",
        "tensor peak is lower than the A10's",
    ),
    Accelerator(
        "a100-sxm",
        "NVIDIA A100 SXM4",
        400,
        {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
        ("a100", "a100-40gb", "a100-80gb", "a100-sxm4", "a100-sxm4-40gb", "a100-sxm4-80gb"),
        "NVIDIA A100 datasheet",
    ),
    Accelerator(
        "a100-pcie",
        "NVIDIA A100 PCIe 80GB",
        300,
        {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
        ("a100-pcie-80gb", "a100-pcie-40gb"),
        "NVIDIA A100 datasheet",
        "the 40GB PCIe card is rated 250 W",
    ),
    Accelerator(
        "l4",
        "NVIDIA L4",
        72,
        {"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T, "fp8": 242.5 * T},
        (),
        "NVIDIA L4 datasheet",
    ),
    Accelerator(
        "l40",
        "NVIDIA L40",
        300,
        {"fp32": 90.5 * T, "tf32": 90.5 * T, "bf16": 181.05 * T, "fp16": 181.05 * T, "fp8": 362 * T},
        (),
        "NVIDIA L40 datasheet",
    ),
    Accelerator(
        "l40s",
        "NVIDIA L40S",
        350,
        {"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T, "fp8": 733 * T},
        (),
        "NVIDIA L40S datasheet",
    ),
    Accelerator(
        "h100-sxm",
        "NVIDIA H100 SXM5",
        700,
        {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T, "fp8": 1979 * T},
        ("h100", "h100-sxm5", "h100-80gb", "h100-80gb-hbm3"),
        "NVIDIA H100 datasheet",
    ),
    Accelerator(
        "h100-pcie",
        "NVIDIA H100 PCIe",
        350,
        {"fp32": 51 * T, "tf32": 378 * T, "bf16": 756.5 * T, "fp16": 756.5 * T, "fp8": 1513 * T},
        (),
        "NVIDIA H100 datasheet",
    ),
    Accelerator(
        "h100-nvl",
        "NVIDIA H100 NVL",
        400,
        {"fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T, "fp16": 835.5 * T, "fp8": 1670.5 * T},
        (),
        "NVIDIA H100 datasheet (350-400 W)",
    ),
    Accelerator(
        "h200",
        "NVIDIA H200 SXM",
        700,
        {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T, "fp8": 1979 * T},
        ("h200-sxm", "h200-141gb"),
        "NVIDIA H200 datasheet",
    ),
    Accelerator(
        "h200-nvl",
        "NVIDIA H200 NVL",
        600,
        {"fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T, "fp16": 835.5 * T, "fp8": 1670.5 * T},
        (),
        "NVIDIA H200 datasheet",
    ),
    Accelerator(
        "b200",
        "NVIDIA B200 (HGX)",
        1000,
        {"fp32": 75 * T, "tf32": 1125 * T, "bf16": 2250 * T, "fp16": 2250 * T, "fp8": 4500 * T},
        (),
        "NVIDIA HGX B200 datasheet, per GPU",
    ),
    Accelerator(
        "mi250x",
        "AMD Instinct MI250X",
        560,
        {"fp32": 95.7 * T, "bf16": 383 * T, "fp16": 383 * T},
        (),
        "AMD MI250X datasheet (fp32 = matrix peak)",
        "ROCm may name an MI250 'MI250X/MI250'; the MI250 peaks ~5% lower",
    ),
    Accelerator(
        "mi300x",
        "AMD Instinct MI300X",
        750,
        {"fp32": 163.4 * T, "tf32": 653.7 * T, "bf16": 1307.4 * T, "fp16": 1307.4 * T, "fp8": 2614.9 * T},
        (),
        "AMD MI300X datasheet",
    ),
    Accelerator(
        "mi325x",
        "AMD Instinct MI325X",
        1000,
        {"fp32": 163.4 * T, "tf32": 653.7 * T, "bf16": 1307.4 * T, "fp16": 1307.4 * T, "fp8": 2614.9 * T},
        (),
        "AMD MI325X datasheet",
    ),
)


def _norm(name: str) -> str:
    # "H100_SXM", "h100 sxm" and "H100-SXM" are the same name.
    return re.sub(r"[\s_]+", "-", name.strip().lower())


_BY_NAME: dict[str, Accelerator] = {}
for _acc in _TABLE:
    for _n in (_acc.key, *_acc.aliases):
        assert _norm(_n) not in _BY_NAME, f"duplicate accelerator name {_n}"
        _BY_NAME[_norm(_n)] = _acc


def known_names() -> list[str]:
    """Every accepted name (keys and aliases), sorted."""
    return sorted(_BY_NAME)


def known_keys() -> list[str]:
    """The canonical table keys, in table order."""
    return [a.key for a in _TABLE]


def lookup(name: str) -> Accelerator:
    """The table entry for a key or alias; ValueError listing the known names otherwise."""
    acc = _BY_NAME.get(_norm(str(name)))
    if acc is None:
        raise ValueError(
            f"unknown accelerator {name!r}; known: {', '.join(known_keys())} "
            "(aliases like a100-80gb or h100 work too). For other hardware give --power-w and "
            "--accelerator-hours."
        )
    return acc


def peak_flops(device_key: str, dtype: str = "bf16") -> float:
    """Peak dense FLOP/s of one device for a dtype.

    ``device_key`` is a table name/alias or ``"cpu"`` (estimated from /proc/cpuinfo).
    ``dtype`` accepts torch-ish spellings too ("bfloat16", "16-mixed", "32-true").
    """
    dt = normalize_dtype(dtype)
    if _norm(device_key) == "cpu":
        return cpu_peak_flops(dt)
    acc = lookup(device_key)
    if dt not in acc.peak:
        raise ValueError(
            f"{acc.name} has no {dt} peak in the table (no native {dt} units); "
            f"known dtypes for it: {', '.join(acc.peak)}"
        )
    return acc.peak[dt]


def normalize_dtype(dtype: str) -> str:
    """Map torch / Lightning precision spellings onto the table's dtype names."""
    d = str(dtype).lower().replace("torch.", "")
    aliases = {
        "float32": "fp32",
        "32": "fp32",
        "32-true": "fp32",
        "float": "fp32",
        "tf32": "tf32",
        "bfloat16": "bf16",
        "bf16-mixed": "bf16",
        "bf16-true": "bf16",
        "float16": "fp16",
        "half": "fp16",
        "16": "fp16",
        "16-mixed": "fp16",
        "16-true": "fp16",
        "float8": "fp8",
        "float8_e4m3fn": "fp8",
        "float8_e5m2": "fp8",
        "transformer-engine": "fp8",
    }
    d = aliases.get(d, d)
    if d not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return d


# ---------------------------------------------------------------------------
# CUDA / ROCm device names as torch.cuda.get_device_name() reports them.
# Order matters: specific variants (NVL, PCIe) before the family default.
_CUDA_RULES: tuple[tuple[str, str], ...] = (
    (r"h100.*nvl", "h100-nvl"),
    (r"h100.*pcie", "h100-pcie"),
    (r"h100", "h100-sxm"),  # "NVIDIA H100 80GB HBM3" is the SXM5 part
    (r"h200.*nvl", "h200-nvl"),
    (r"h200", "h200"),
    (r"b200", "b200"),
    (r"a100.*pcie", "a100-pcie"),
    (r"a100", "a100-sxm"),
    (r"a10g", "a10g"),
    (r"\ba10\b", "a10"),
    (r"l40s", "l40s"),
    (r"\bl40\b", "l40"),
    (r"\bl4\b", "l4"),
    (r"v100.*pcie", "v100-pcie"),
    (r"v100", "v100"),
    (r"\bt4\b", "t4"),
    (r"mi325x", "mi325x"),
    (r"mi300x", "mi300x"),
    (r"mi250", "mi250x"),
)


def cuda_device_name_to_key(device_name: str) -> str | None:
    """Table key for a ``torch.cuda.get_device_name()`` string, or None if unknown.

    >>> cuda_device_name_to_key("NVIDIA H100 80GB HBM3")
    'h100-sxm'
    """
    s = str(device_name).lower()
    for pattern, key in _CUDA_RULES:
        if re.search(pattern, s):
            return key
    return None


# ---------------------------------------------------------------------------
# CPU peak: cores x clock x FLOPs/cycle/core.
#
# FLOPs/cycle/core assume two FMA units at full vector width (an FMA is 2 FLOPs):
#   AVX2+FMA  : 2 units x 8 fp32 lanes x 2 = 32 fp32
#   AVX-512F  : 2 units x 16 lanes x 2     = 64 fp32
#     (an upper bound: Zen 4 and 1-FMA Xeons reach half of it)
#   bf16: AVX512_BF16 (VDPBF16PS, 2 products per fp32 lane) = 2x fp32;
#         AMX-BF16 tiles (Sapphire Rapids+) = 1024 per core; without either, bf16
#         runs at fp32 speed (converted), so its peak is the fp32 peak.
#   fp16: AVX512_FP16 = 2x fp32; AMX-FP16 = 1024; else fp32 speed.
# tf32 does not exist on CPUs: it maps to fp32. fp8 has no CPU peak.
def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_flops_per_cycle(dtype: str = "fp32", flags: set[str] | None = None) -> int:
    dt = normalize_dtype(dtype)
    fl = cpu_flags() if flags is None else flags
    if "avx512f" in fl:
        fp32 = 64
    elif "avx2" in fl and "fma" in fl:
        fp32 = 32
    elif "avx" in fl:
        fp32 = 16  # 8 lanes, separate mul + add
    else:
        fp32 = 8  # SSE / unknown: 4 lanes, mul + add
    if dt in ("fp32", "tf32"):
        return fp32
    if dt == "bf16":
        if "amx_bf16" in fl and "amx_tile" in fl:
            return 1024
        return 2 * fp32 if "avx512_bf16" in fl else fp32
    if dt == "fp16":
        if "amx_fp16" in fl and "amx_tile" in fl:
            return 1024
        return 2 * fp32 if "avx512_fp16" in fl else fp32
    raise ValueError(f"no CPU peak for {dt}; CPUs have no native {dt} math")


def cpu_clock_hz(cpuinfo_path: str = "/proc/cpuinfo") -> float | None:
    """Max clock: `lscpu` 'CPU max MHz', then cpufreq max, then /proc/cpuinfo 'cpu MHz'."""
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(
                ["lscpu"], capture_output=True, text=True, timeout=5, env={**os.environ, "LC_ALL": "C"}
            ).stdout
            m = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.M)
            if m and float(m.group(1)) > 0:
                return float(m.group(1)) * 1e6
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return float(f.read().strip()) * 1e3  # kHz
    except (OSError, ValueError):
        pass
    try:
        with open(cpuinfo_path) as f:
            mhz = [float(m.group(1)) for m in re.finditer(r"^cpu MHz\s*:\s*([\d.]+)", f.read(), re.M)]
        if mhz:
            return max(mhz) * 1e6
    except OSError:
        pass
    return None


def cpu_physical_cores() -> int:
    """Physical cores this process may use (logical CPUs in its affinity / threads per core)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:
        logical = os.cpu_count() or 1
    siblings = cores = None
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        s = re.search(r"^siblings\s*:\s*(\d+)", text, re.M)
        c = re.search(r"^cpu cores\s*:\s*(\d+)", text, re.M)
        siblings, cores = (int(s.group(1)) if s else None), (int(c.group(1)) if c else None)
    except OSError:
        pass
    tpc = max(1, siblings // cores) if siblings and cores else 1
    return max(1, logical // tpc)


def cpu_peak_flops(
    dtype: str = "fp32", *, cores: int | None = None, clock_hz: float | None = None, flops_per_cycle: int | None = None
) -> float:
    """Estimated CPU peak FLOP/s; every factor can be overridden (env LMFORGE_CPU_CLOCK_HZ too)."""
    cores = cores or cpu_physical_cores()
    if clock_hz is None and os.environ.get("LMFORGE_CPU_CLOCK_HZ"):
        clock_hz = float(os.environ["LMFORGE_CPU_CLOCK_HZ"])
    clock_hz = clock_hz or cpu_clock_hz()
    if not clock_hz:
        raise ValueError("could not read the CPU clock; pass clock_hz= or set LMFORGE_CPU_CLOCK_HZ")
    fpc = flops_per_cycle or cpu_flops_per_cycle(dtype)
    return float(cores * clock_hz * fpc)
