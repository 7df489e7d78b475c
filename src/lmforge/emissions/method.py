"""What CodeCarbon actually measured on this machine, in words: RAPL or a load model, which TDP and why.

Reads CodeCarbon internals (``_hardware``, ``_conf``, its CPU table); on version drift the answer
degrades to what can still be read rather than guessing.
"""

from __future__ import annotations

import platform
from typing import Any


def describe_method(tracker: Any, last_data: Any = None) -> tuple[str, dict[str, Any]]:
    """What CodeCarbon actually measured: a short label and a detail dict.

    Reads CodeCarbon internals (``_hardware``, ``_conf``); on version drift the label
    degrades to what can still be read rather than guessing.
    """
    detail: dict[str, Any] = {"tracking_mode": getattr(tracker, "_tracking_mode", None)}
    short: dict[str, str] = {}  # component -> label, printed GPU, CPU, RAM
    long: list[str] = []
    conf = getattr(tracker, "_conf", {}) or {}
    linux = platform.system() == "Linux"
    for hw in getattr(tracker, "_hardware", []) or []:
        kind = type(hw).__name__
        if kind == "GPU":
            model = str(conf.get("gpu_model") or "")
            amd = "amd" in model.lower() or "instinct" in model.lower()
            detail["gpu"], detail["gpu_model"] = ("amdsmi" if amd else "nvml"), model
            short["gpu"] = "AMD SMI" if amd else "NVML"
            long.append(f"GPU: {'AMD SMI' if amd else 'NVML'} energy counters ({model})")
        elif kind == "CPU":
            mode, tdp = getattr(hw, "_mode", "?"), getattr(hw, "_tdp", None)
            detail["cpu"], detail["cpu_model"] = mode, getattr(hw, "_model", None)
            no_rapl = " (no RAPL)" if linux else ""
            if mode in ("intel_rapl", "windows_emi"):
                short["cpu"] = "RAPL"
                long.append("CPU: RAPL energy counters")
            elif mode == "cpu_load":
                detail["cpu_tdp_w"] = tdp
                detail["cpu_tdp_source"] = src = tdp_source(tracker, hw)
                short["cpu"] = "CPU-load estimate" + no_rapl
                long.append(f"CPU: load estimate, power = {tdp:g} W TDP x (0.1 + 0.9 x load^3), TDP from {src}")
            elif mode == "constant":
                detail["cpu_tdp_w"] = tdp
                short["cpu"] = "TDP" + no_rapl
                long.append(f"CPU: constant 50% of a {tdp:g} W TDP")
            else:
                short["cpu"] = str(mode)
                long.append(f"CPU: {mode}")
            if linux and mode not in ("intel_rapl",):
                long[-1] += "; no RAPL (/sys/class/powercap/intel-rapl missing or unreadable)"
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            ram_w = getattr(last_data, "ram_power", None)
            detail["ram"] = "constant" if forced else "model"
            if ram_w:
                detail["ram_power_w"] = round(float(ram_w), 3)
            short["ram"] = "RAM " + ("constant" if forced else "model")
            long.append(
                f"RAM: {'user constant' if forced else 'size-based model'}"
                + (f", {float(ram_w):.3g} W" if ram_w else "")
            )
        elif kind in ("AppleSiliconChip", "Raspberry"):
            label = "powermetrics" if kind == "AppleSiliconChip" else "Raspberry Pi PMIC"
            short[f"apple_{getattr(hw, 'chip_part', '')}"] = label
            long.append(f"{getattr(hw, 'chip_part', '')}: {label}")
    detail.setdefault("gpu", None)
    if detail["gpu"] is None:
        long.append("GPU: none")
    detail["rapl"] = detail.get("cpu") in ("intel_rapl", "windows_emi")
    rank = {"GPU": 0, "CPU": 1, "RAM": 3}
    detail["description"] = "; ".join(sorted(long, key=lambda x: rank.get(x.split(":")[0], 2)))
    order = ["gpu", "cpu"] + [k for k in short if k not in ("gpu", "cpu", "ram")] + ["ram"]
    return (" + ".join(short[k] for k in order if k in short) or "unknown"), detail


def tdp_source(tracker: Any, hw: Any) -> str:
    if getattr(tracker, "_force_cpu_power", None):
        return "the user (force_cpu_power)"
    if getattr(hw, "_is_generic_tdp", False):
        return "CodeCarbon's generic 85 W constant"
    try:  # a model CodeCarbon does not know gets 4 W per thread (core/cpu.py, TDP._main)
        from codecarbon.core.cpu import TDP
        from codecarbon.input import DataSource

        model = getattr(hw, "_model", "") or ""
        df = DataSource().get_cpu_power_data()
        if TDP.__new__(TDP)._get_matching_cpu(model, df) is None:
            return f"CodeCarbon's 4 W/thread default for an unlisted CPU ({model!r})"
        return f"CodeCarbon's CPU table ({model!r})"
    except Exception:  # version drift in codecarbon internals: stay vague, not wrong
        return "CodeCarbon"
