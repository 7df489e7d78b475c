"""Estimate a training run's energy and CO2e before it runs; project it from a partial run.

    FLOPs            = 6 x params x tokens            (+ 12 x n_layer x d_model x seq_len
                                                       x tokens when the shape is given:
                                                       attention scores, as in PaLM App. B)
    accelerator-h    = FLOPs / (peak FLOP/s x MFU) / 3600      (or given directly)
    energy (kWh)     = accelerator-h x power per accelerator (kW) x PUE
    CO2e (kg)        = energy x grid intensity (gCO2e/kWh) / 1000

Defaults: power = the accelerator's TDP (an upper bound: GPUs rarely average TDP);
PUE = 1.0 (device energy only, the same thing the run-time tracker measures by default;
use ~1.1 for a hyperscale datacenter, ~1.5 for a typical one); intensity = 475 gCO2e/kWh,
CodeCarbon's world average. ``grid_intensity("FRA")`` gives CodeCarbon's figure for a
country/region so an estimate and a measured run use the same grid.

CLI:  python -m lmforge.emissions.estimate --params 124e6 --tokens 1e9 --accelerator a100 --mfu 0.4
      python -m lmforge.emissions.estimate --accelerator-hours 3.552e6 --power-w 330 --pue 1.1 --intensity 429
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lmforge import hardware
from lmforge.validate import positive

DEFAULT_PUE = 1.0
DEFAULT_INTENSITY_G_PER_KWH = 475.0  # CodeCarbon's "world_average" (IEA-based)
DEFAULT_DTYPE = "bf16"
# Assumed MFU when a run's is not known yet: well-tuned GPU LM training reaches 0.3-0.5.
# CPU: the default `python train.py` measured perf/mfu 0.52 on an idle 2-core AMD EPYC (bf16,
# against lmforge.hardware's CPU peak), so 0.4 leaves headroom for smaller models and a busy
# machine. The mid-run projection replaces the guess with a measurement.
DEFAULT_MFU = {"gpu": 0.35, "cpu": 0.4}


class EstimateError(ValueError):
    """Bad estimator input; the message names the argument and what is accepted."""


@dataclass(frozen=True)
class Estimate:
    accelerator_hours: float
    energy_kwh: float
    co2_kg: float
    power_w: float  # average per accelerator
    pue: float
    intensity_g_per_kwh: float
    flops: float | None = None
    wall_hours: float | None = None
    accelerator: str | None = None
    count: int | None = None
    mfu: float | None = None
    dtype: str | None = None
    peak_flops: float | None = None  # per accelerator

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> float | None:
    checked = positive(name, value, allow_zero=allow_zero, error=EstimateError)
    return None if checked is None else float(checked)


def formula_training_flops(
    params: float, tokens: float, *, n_layer: int | None = None, d_model: int | None = None, seq_len: int | None = None
) -> float:
    """Training FLOPs from counts alone, before any net exists: 6·N·D, plus 12·L·d·T·D for attention when the
    shape is known. (lmforge.flops counts a built net's step exactly instead.)"""
    n = _given("params", params)
    d = _given("tokens", tokens)
    flops = 6.0 * n * d
    shape = (n_layer, d_model, seq_len)
    if any(x is not None for x in shape):
        if any(x is None for x in shape):
            raise EstimateError("give all of n_layer, d_model and seq_len for the attention term, or none")
        flops += 12.0 * _given("n_layer", n_layer) * _given("d_model", d_model) * _given("seq_len", seq_len) * d
    return flops


def _given(name: str, value: float | None, *, allow_zero: bool = False) -> float:
    """`_positive` for a value that must be there: a number, never None."""
    v = _positive(name, value, allow_zero=allow_zero)
    if v is None:
        raise EstimateError(f"{name} must be a number, got None")
    return v


def estimate(
    *,
    params: float | None = None,
    tokens: float | None = None,
    flops: float | None = None,
    accelerator: str | None = None,
    count: int | float = 1,  # a whole float (8.0) is taken as its int
    mfu: float | None = None,
    dtype: str = DEFAULT_DTYPE,
    accelerator_hours: float | None = None,
    power_w: float | None = None,
    pue: float = DEFAULT_PUE,
    intensity: float = DEFAULT_INTENSITY_G_PER_KWH,
    n_layer: int | None = None,
    d_model: int | None = None,
    seq_len: int | None = None,
    peak_flops: float | None = None,
) -> Estimate:
    """Estimate from compute (params+tokens or flops, accelerator, mfu) or from accelerator-hours."""
    pue = _given("pue", pue)
    if pue < 1.0:
        raise EstimateError(f"pue must be >= 1.0 (facility energy / IT energy), got {pue}")
    intensity = _given("intensity", intensity, allow_zero=True)
    power_w = _positive("power_w", power_w)
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise EstimateError(f"count must be a whole number >= 1, got {count!r}")

    acc = None
    if accelerator is not None and str(accelerator).lower() != "cpu":
        try:
            acc = hardware.lookup(accelerator)
        except ValueError as e:
            raise EstimateError(str(e)) from None
    if power_w is None:
        if acc is None:
            raise EstimateError(
                "no average power: give --power-w (watts per accelerator), or an --accelerator "
                "from the table so its TDP is used"
            )
        power_w = float(acc.tdp_w)

    compute_given = params is not None or tokens is not None or flops is not None
    if compute_given and accelerator_hours is not None:
        raise EstimateError("give either --params/--tokens (or --flops) or --accelerator-hours, not both")
    peak = None
    wall_hours = None
    dt = None
    if accelerator_hours is not None:
        acc_hours = _given("accelerator_hours", accelerator_hours)
        if accelerator is not None:
            wall_hours = acc_hours / count
    elif compute_given:
        if flops is None:
            if params is None or tokens is None:
                raise EstimateError("give both --params and --tokens (or --flops)")
            flops = formula_training_flops(params, tokens, n_layer=n_layer, d_model=d_model, seq_len=seq_len)
        flops = _given("flops", flops)
        if accelerator is None:
            raise EstimateError("--accelerator NAME is needed to turn FLOPs into time")
        mfu = _positive("mfu", mfu)
        if mfu is None or mfu > 1:
            raise EstimateError(f"--mfu must be in (0, 1] (model FLOPs utilisation), got {mfu!r}")
        try:
            dt = hardware.normalize_dtype(dtype)
            peak = _positive("peak_flops", peak_flops) or hardware.peak_flops(accelerator, dt)
        except ValueError as e:
            raise EstimateError(str(e)) from None
        acc_hours = flops / (peak * mfu) / 3600.0  # independent of count: more chips, less wall time
        wall_hours = acc_hours / count
    else:
        raise EstimateError("give --params and --tokens (with --accelerator and --mfu) or --accelerator-hours")

    energy_kwh = acc_hours * power_w / 1000.0 * pue
    return Estimate(
        accelerator_hours=acc_hours,
        energy_kwh=energy_kwh,
        co2_kg=energy_kwh * intensity / 1000.0,
        power_w=power_w,
        pue=pue,
        intensity_g_per_kwh=intensity,
        flops=flops,
        wall_hours=wall_hours,
        accelerator=(acc.key if acc else (str(accelerator).lower() if accelerator else None)),
        count=count if accelerator is not None else None,
        mfu=mfu,
        dtype=dt,
        peak_flops=peak,
    )


def project(
    measured_energy_kwh: float,
    measured_co2_kg: float,
    fraction_done: float,
    *,
    elapsed_s: float | None = None,
    fixed_energy_kwh: float = 0.0,
    fixed_co2_kg: float = 0.0,
    fixed_s: float = 0.0,
) -> dict[str, float]:
    """Whole-run projection from the part measured so far.

    ``fixed_*`` is the part of the measurement that will not grow with steps (start-up,
    tracker warm-up); the rest is scaled by 1 / fraction_done.
    """
    f = _given("fraction_done", fraction_done)
    if f > 1:
        raise EstimateError(f"fraction_done must be in (0, 1], got {fraction_done}")
    e = _given("measured_energy_kwh", measured_energy_kwh, allow_zero=True)
    c = _given("measured_co2_kg", measured_co2_kg, allow_zero=True)
    fe, fc = min(fixed_energy_kwh, e), min(fixed_co2_kg, c)
    out = {
        "fraction_done": f,
        "measured_energy_kwh": e,
        "measured_co2_kg": c,
        "energy_kwh": fe + (e - fe) / f,
        "co2_kg": fc + (c - fc) / f,
    }
    if elapsed_s is not None:
        el = _given("elapsed_s", elapsed_s, allow_zero=True)
        fs = min(fixed_s, el)
        out["measured_duration_s"] = el
        out["duration_s"] = fs + (el - fs) / f
    return out


def grid_intensity(country_iso_code: str = "USA", region: str | None = None) -> float:
    """CodeCarbon's grid carbon intensity (gCO2e/kWh) for a country / US-CA-CN region."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    geo = GeoMetadata(country_iso_code=country_iso_code.upper(), region=region.lower() if region else None)
    kg = Emissions(DataSource()).get_private_infra_emissions(Energy.from_energy(kWh=1.0), geo)
    return float(kg) * 1000.0


def host_power_w() -> float:
    """A CPU host's power as CodeCarbon models it at full load: CPU TDP + RAM model.

    Uses CodeCarbon's own CPU table / 4 W-per-thread fallback and RAM model, so a CPU
    estimate and the tracker's later measurement rest on the same numbers (no RAPL needed).
    """
    import logging

    from codecarbon.core import cpu
    from codecarbon.core.hardware_cache import get_cached_tdp  # shared with the tracker's probe
    from codecarbon.core.util import count_physical_cpus
    from codecarbon.external.ram import RAM

    # After the imports: importing codecarbon's logger module resets its level to INFO.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its TDP probe warns on unknown CPUs

    tdp = get_cached_tdp(cpu).tdp or 85.0  # 85 W: CodeCarbon's own last-resort constant
    return float(tdp) * max(1, count_physical_cpus()) + RAM(tracking_mode="machine").total_power().W


def estimate_for_run(
    params: float,
    tokens: float,
    *,
    device: str | None = None,
    count: int = 1,
    dtype: str = DEFAULT_DTYPE,
    mfu: float | None = None,
    power_w: float | None = None,
    pue: float = DEFAULT_PUE,
    intensity: float | None = None,
    country_iso_code: str = "USA",
    region: str | None = None,
    n_layer: int | None = None,
    d_model: int | None = None,
    seq_len: int | None = None,
    flops: float | None = None,
) -> Estimate:
    """The estimate ``train.py`` prints before a run. ``flops``, when known, replaces 6·N·D (+ attention).

    ``device``: a table key, a ``torch.cuda.get_device_name()`` string or "cpu"
    (default: this machine's first CUDA device, else "cpu"). Power defaults to the GPU's
    TDP, or on CPU to ``host_power_w()``; intensity to CodeCarbon's figure for the
    tracker's country/region, so estimate, projection and measurement are comparable.
    """
    if device is None:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    key = "cpu" if str(device).lower() == "cpu" else (hardware.cuda_device_name_to_key(device) or device)
    if power_w is None and key == "cpu":
        power_w = host_power_w()
    if intensity is None:
        intensity = grid_intensity(country_iso_code, region)
    if mfu is None:
        mfu = DEFAULT_MFU["cpu" if key == "cpu" else "gpu"]
    return estimate(
        params=params,
        tokens=tokens,
        flops=flops,
        accelerator=key,
        count=count,
        mfu=mfu,
        dtype=dtype,
        power_w=power_w,
        pue=pue,
        intensity=intensity,
        n_layer=n_layer,
        d_model=d_model,
        seq_len=seq_len,
    )


# --------------------------------------------------------------------------- formatting
def fmt_energy(kwh: float) -> str:
    if kwh >= 1000:
        return f"{kwh / 1000:,.4g} MWh"
    if kwh >= 1:
        return f"{kwh:,.4g} kWh"
    if kwh >= 1e-3:
        return f"{kwh * 1000:.4g} Wh"
    return f"{kwh * 1e6:.4g} mWh"


def fmt_co2(kg: float) -> str:
    if kg >= 1000:
        return f"{kg / 1000:,.4g} tCO2e"
    if kg >= 1:
        return f"{kg:,.4g} kgCO2e"
    return f"{kg * 1000:.4g} gCO2e"


def fmt_hours(h: float) -> str:
    if h >= 48:
        return f"{h / 24:,.3g} days"
    if h >= 1:
        return f"{h:.3g} h"
    return f"{h * 60:.3g} min"


def format_estimate(est: Estimate | Mapping[str, Any], title: str = "Emissions estimate (before the run)") -> str:
    d = est.to_dict() if isinstance(est, Estimate) else dict(est)
    lines = [title]
    if d.get("flops") is not None:
        lines.append(f"  compute    {d['flops']:.3g} FLOPs")
    if d.get("peak_flops") is not None:
        name = d.get("accelerator") or "?"
        lines.append(
            f"  hardware   {d.get('count', 1)} x {name}, {d['peak_flops'] / 1e12:,.4g} TFLOP/s "
            f"{d.get('dtype', '')} peak x MFU {d.get('mfu', float('nan')):.2f}"
        )
    t = f"  time       {d['accelerator_hours']:,.4g} accelerator-hours"
    if d.get("wall_hours") is not None:
        t += f" ({fmt_hours(d['wall_hours'])} wall)"
    lines.append(t)
    lines.append(
        f"  energy     {fmt_energy(d['energy_kwh'])} ({d['power_w']:,.4g} W per accelerator x PUE {d['pue']:.2f})"
    )
    lines.append(f"  emissions  {fmt_co2(d['co2_kg'])} ({d['intensity_g_per_kwh']:,.4g} gCO2e/kWh)")
    return "\n".join(lines)


def format_projection(proj: Mapping[str, Any], title: str | None = None) -> str:
    title = title or f"Emissions projection (from the first {proj['fraction_done']:.0%} of steps)"
    lines = [
        title,
        f"  measured   {fmt_energy(proj['measured_energy_kwh'])}, {fmt_co2(proj['measured_co2_kg'])}",
        f"  whole run  {fmt_energy(proj['energy_kwh'])}, {fmt_co2(proj['co2_kg'])}",
    ]
    if proj.get("duration_s") is not None:
        lines[-1] += f", {fmt_hours(proj['duration_s'] / 3600)}"
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lmforge.emissions.estimate",
        description="Estimate a training run's FLOPs, accelerator-hours, energy and CO2e.",
    )
    c = p.add_argument_group("from compute")
    c.add_argument("--params", type=float, help="model parameters, e.g. 124e6")
    c.add_argument("--tokens", type=float, help="training tokens, e.g. 3e11")
    c.add_argument("--flops", type=float, help="total training FLOPs (instead of params/tokens)")
    c.add_argument("--n-layer", type=int, help="layers (with --d-model and --seq-len: add attention FLOPs)")
    c.add_argument("--d-model", type=int)
    c.add_argument("--seq-len", type=int)
    c.add_argument("--mfu", type=float, help="model FLOPs utilisation in (0, 1], e.g. 0.4")
    c.add_argument("--dtype", default=DEFAULT_DTYPE, help="fp32, tf32, bf16, fp16, fp8 (default bf16)")
    c.add_argument("--peak-flops", type=float, help="override the table's peak FLOP/s per accelerator")
    p.add_argument("--accelerator", help=f"one of: {', '.join(hardware.known_keys())}")
    p.add_argument("--count", type=int, default=1, help="number of accelerators (default 1)")
    p.add_argument("--accelerator-hours", type=float, help="total accelerator-hours (instead of compute)")
    p.add_argument("--power-w", type=float, help="average watts per accelerator (default: its TDP)")
    p.add_argument("--pue", type=float, default=DEFAULT_PUE, help=f"datacenter PUE (default {DEFAULT_PUE})")
    p.add_argument(
        "--intensity",
        type=float,
        default=DEFAULT_INTENSITY_G_PER_KWH,
        help=f"grid gCO2e/kWh (default {DEFAULT_INTENSITY_G_PER_KWH:g}, world average)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        est = estimate(
            params=args.params,
            tokens=args.tokens,
            flops=args.flops,
            accelerator=args.accelerator,
            count=args.count,
            mfu=args.mfu,
            dtype=args.dtype,
            accelerator_hours=args.accelerator_hours,
            power_w=args.power_w,
            pue=args.pue,
            intensity=args.intensity,
            n_layer=args.n_layer,
            d_model=args.d_model,
            seq_len=args.seq_len,
            peak_flops=args.peak_flops,
        )
    except EstimateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = est.to_dict()
        d.setdefault("flops", None)
        print(json.dumps(d))
    else:
        print(format_estimate(est, title="Emissions estimate"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
