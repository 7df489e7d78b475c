"""Find run folders under the given paths and read what each one cost.

A run folder holds any of: ``summary.json`` (DESIGN.md contract), CodeCarbon's
``emissions.csv``, Hydra's ``.hydra/``. A sweep folder (Hydra multirun, sweep.py)
holds numbered run folders, ``multirun.yaml`` and maybe ``sweep_summary.json``.
Missing or partial data is recorded on the run as a note, never raised.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_DEPTH = 4  # multirun/<date>/<time>/<n>: deep enough, not a disk crawl


class ReportError(ValueError):
    """Bad report input (missing path, nothing found); the message names the fix."""


@dataclass
class Run:
    path: Path
    name: str
    sweep: Path | None = None
    status: str | None = None
    objective: str | None = None
    model: str | None = None
    params: int | None = None
    tokens: int | None = None
    wall_time_s: float | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    energy_kwh: float | None = None
    co2_kg: float | None = None
    duration_s: float | None = None
    power_w: float | None = None
    method: str | None = None
    emissions_source: str | None = None  # "summary.json" | "emissions.csv"
    overrides: list[str] = field(default_factory=list)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds, watts)
    notes: list[str] = field(default_factory=list)
    label: str = ""

    @property
    def g_per_mtok(self) -> float | None:
        if self.co2_kg is None or not self.tokens:
            return None
        return self.co2_kg * 1000.0 / (self.tokens / 1e6)

    @property
    def j_per_token(self) -> float | None:
        if self.energy_kwh is None or not self.tokens:
            return None
        return self.energy_kwh * 3.6e6 / self.tokens

    @property
    def emissions_ok(self) -> bool:
        return self.energy_kwh is not None and self.co2_kg is not None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("timeline",)}
        d["path"], d["sweep"] = str(self.path), (str(self.sweep) if self.sweep else None)
        d["g_per_mtok"], d["j_per_token"] = self.g_per_mtok, self.j_per_token
        return d


@dataclass
class Sweep:
    path: Path | None  # None: runs given directly
    name: str
    runs: list[Run]
    sweep_overrides: list[str] = field(default_factory=list)
    sweep_summary: dict[str, Any] | None = None

    def totals(self) -> dict[str, Any]:
        return totals(self.runs)


def totals(runs: list[Run]) -> dict[str, Any]:
    def s(attr: str) -> float | None:
        vals = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        return float(sum(vals)) if vals else None

    missing = sum(1 for r in runs if not r.emissions_ok)
    return {
        "runs": len(runs),
        "wall_time_s": s("wall_time_s"),
        "energy_kwh": s("energy_kwh"),
        "co2_kg": s("co2_kg"),
        "tokens": s("tokens"),
        "missing_emissions": missing,
    }


# --------------------------------------------------------------------------- discovery
def _is_run(p: Path) -> bool:
    return (p / "summary.json").is_file() or (p / "emissions.csv").is_file() or (p / ".hydra" / "config.yaml").is_file()


def _natural(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def discover(paths: list[str | Path]) -> list[Sweep]:
    """Group the run folders found under ``paths`` by the sweep folder that holds them."""
    direct: list[Run] = []
    sweeps: dict[Path, tuple[str, list[Run]]] = {}  # folder -> (name relative to the PATH given, runs)
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ReportError(f"{p}: no such folder; give run folders or multirun/sweep folders")
        if not p.is_dir():
            raise ReportError(f"{p}: not a folder; give the run folder that holds summary.json, not the file itself")
        if _is_run(p):
            direct.append(read_run(p))
            continue
        found = _scan(p, 0, sweeps, p.resolve().parent)
        if not found:
            raise ReportError(
                f"{p}: no run folders found (a run folder holds summary.json, "
                f"emissions.csv or .hydra/config.yaml; searched {MAX_DEPTH} levels)"
            )
    out = [
        Sweep(
            path=sp,
            name=name,
            runs=runs,
            sweep_overrides=_sweep_overrides(sp),
            sweep_summary=_read_json(sp / "sweep_summary.json"),
        )
        for sp, (name, runs) in sweeps.items()
    ]
    if direct:
        out.insert(0, Sweep(path=None, name="runs", runs=direct))
    for sw in out:
        _label(sw)
    return out


def _scan(p: Path, depth: int, sweeps: dict[Path, tuple[str, list[Run]]], base: Path) -> int:
    if depth > MAX_DEPTH:
        return 0
    found = 0
    try:
        children = sorted((c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")), key=_natural)
    except OSError:
        return 0
    for c in children:
        if _is_run(c):
            name = p.resolve().relative_to(base).as_posix()
            sweeps.setdefault(p, (name, []))[1].append(read_run(c, sweep=p))
            found += 1
        else:
            found += _scan(c, depth + 1, sweeps, base)
    return found


# --------------------------------------------------------------------------- one run
def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        with open(p) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _read_yaml(p: Path) -> Any:
    try:
        import yaml

        with open(p) as f:
            return yaml.safe_load(f)
    except Exception:
        return None


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x: Any) -> int | None:
    v = _num(x)
    return int(v) if v is not None else None


def read_run(path: Path, sweep: Path | None = None) -> Run:
    run = Run(path=path, name=path.name, sweep=sweep)  # shown under its sweep's heading
    summary = _read_json(path / "summary.json")
    if summary is None:
        run.notes.append("no summary.json" if not (path / "summary.json").exists() else "unreadable summary.json")
        summary = {}
    run.status = summary.get("status")
    if run.status and run.status != "completed":
        run.notes.append(f"run {run.status}")
    run.objective = summary.get("objective")
    run.model = summary.get("model")
    run.params, run.tokens = _int(summary.get("params")), _int(summary.get("tokens"))
    run.wall_time_s = _num(summary.get("wall_time_s"))
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        metrics = {}
    run.val_loss = _num(metrics.get("val/loss"))
    run.val_ppl = _num(metrics.get("val/ppl"))
    if run.val_ppl is None and run.val_loss is not None and run.val_loss < 50:
        run.val_ppl = math.exp(run.val_loss)
    ov = summary.get("overrides")
    if not isinstance(ov, list):
        ov = _read_yaml(path / ".hydra" / "overrides.yaml")
    run.overrides = [str(o) for o in ov] if isinstance(ov, list) else []
    if run.model is None:
        run.model = next((o.split("=", 1)[1] for o in run.overrides if o.startswith("model=")), None)
    _read_emissions(run, summary.get("emissions"))
    _read_timeline(run)
    return run


def _read_emissions(run: Run, em: Any) -> None:
    if isinstance(em, dict) and _num(em.get("energy_kwh")) is not None and _num(em.get("co2_kg")) is not None:
        run.energy_kwh, run.co2_kg = _num(em["energy_kwh"]), _num(em["co2_kg"])
        run.duration_s, run.power_w = _num(em.get("duration_s")), _num(em.get("power_w"))
        run.method = em.get("method")
        run.emissions_source = "summary.json"
        if em.get("status") not in (None, "complete"):
            run.notes.append(f"emissions {em['status']}" + (f": {em['error']}" if em.get("error") else ""))
        return
    csv_tot = read_codecarbon_csvs(run.path)
    if csv_tot is None:
        run.notes.append("emissions missing")
        return
    run.energy_kwh, run.co2_kg = csv_tot["energy_kwh"], csv_tot["co2_kg"]
    run.duration_s, run.power_w = csv_tot.get("duration_s"), csv_tot.get("power_w")
    run.method = run.method or "codecarbon (method not recorded)"
    run.emissions_source = "emissions.csv"
    run.notes.append("emissions from emissions.csv only" + (" (partial rows)" if csv_tot["partial"] else ""))


# CodeCarbon's CSV columns moved between versions (experiment_id, water_consumed, the
# utilisation columns, wue arrived in 2.x/3.x; very old files lack run_id): read by name,
# accept aliases, and rebuild energy from its parts when the total column is missing.
_ALIASES = {
    "energy_kwh": ("energy_consumed", "energy_consumed_kwh", "total_energy"),
    "co2_kg": ("emissions", "emissions_kg", "co2_emissions"),
    "duration_s": ("duration", "duration_s"),
}
_PARTS = ("cpu_energy", "gpu_energy", "ram_energy")
_POWERS = ("cpu_power", "gpu_power", "ram_power")


def _get(row: dict[str, str], key: str) -> float | None:
    for name in _ALIASES.get(key, (key,)):
        if name in row:
            v = _num(row[name])
            if v is not None:
                return v
    return None


def read_codecarbon_csvs(folder: Path) -> dict[str, Any] | None:
    """Totals over ``emissions.csv`` and ``emissions_node*.csv``: last row per run_id, summed."""
    files = [folder / "emissions.csv", *sorted(folder.glob("emissions_node*.csv"))]
    energy = co2 = 0.0
    duration = 0.0
    partial = False
    seen = False
    for fp in files:
        if not fp.is_file():
            continue
        try:
            with open(fp, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error):
            partial = True
            continue
        last: dict[str, dict[str, str]] = {}
        for i, row in enumerate(rows):
            last[row.get("run_id") or f"row{i}"] = row  # rows of one run_id are cumulative
        node_dur = 0.0
        for row in last.values():
            e = _get(row, "energy_kwh")
            if e is None:
                parts = [_num(row.get(p)) for p in _PARTS]
                e = sum(x for x in parts if x is not None) if any(x is not None for x in parts) else None
            c = _get(row, "co2_kg")
            if e is None or c is None:
                partial = True
                continue
            energy, co2, seen = energy + e, co2 + c, True
            node_dur += _get(row, "duration_s") or 0.0
        duration = max(duration, node_dur)
    if not seen:
        return None
    return {
        "energy_kwh": energy,
        "co2_kg": co2,
        "duration_s": duration or None,
        "power_w": energy * 3.6e6 / duration if duration else None,
        "partial": partial,
    }


def _read_timeline(run: Run) -> None:
    fp = run.path / "emissions_timeline.csv"
    pts: list[tuple[float, float]] = []
    if fp.is_file():
        try:
            with open(fp, newline="") as f:
                for row in csv.DictReader(f):
                    t, w = _num(row.get("time_s")), _num(row.get("power_w"))
                    if t is not None and w is not None:
                        pts.append((t, w))
        except (OSError, csv.Error):
            pass
    if not pts:  # several cumulative rows of one run in emissions.csv: differentiate
        try:
            with open(run.path / "emissions.csv", newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error):
            rows = []
        prev = None
        for row in rows:
            d, e = _get(row, "duration_s"), _get(row, "energy_kwh")
            if d is None or e is None:
                continue
            if prev and row.get("run_id") == prev[0] and d > prev[1]:
                pts.append((d, (e - prev[2]) * 3.6e6 / (d - prev[1])))
            prev = (row.get("run_id"), d, e)
    run.timeline = pts


def _sweep_overrides(sweep: Path) -> list[str]:
    y = _read_yaml(sweep / "multirun.yaml")
    try:
        task = y["hydra"]["overrides"]["task"]
        return [str(t) for t in task] if isinstance(task, list) else []
    except (TypeError, KeyError):
        return []


def _label(sw: Sweep) -> None:
    """A short configuration label: the run's overrides minus those all runs share."""
    common = set.intersection(*(set(r.overrides) for r in sw.runs)) if len(sw.runs) > 1 else set()
    for r in sw.runs:
        own = [o for o in r.overrides if o not in common]
        r.label = " ".join(own) if own else r.name
