"""The sweep folder's own files: `sweep_summary.json`, the best trial as a command and as an experiment.

Everything is read back from the trials' run folders (summary.json), so the summary says what the
runs say — including their emissions when the runs measured them.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lmforge.summary import read_summary
from lmforge.sweep.spec import SweepSpec, as_dict, spec_dict
from lmforge.sweep.trials import metric_value

SUMMARY_FILE = "sweep_summary.json"
BEST_COMMAND_FILE = "best_command.sh"
STATES = ("completed", "pruned", "failed", "interrupted", "running")


def _emissions(run_summary: dict[str, Any]) -> dict[str, Any] | None:
    em = run_summary.get("emissions")
    if not isinstance(em, dict):
        return None
    keep = {k: em.get(k) for k in ("energy_kwh", "co2_kg", "duration_s", "method") if em.get(k) is not None}
    return keep or None


def enrich(spec: SweepSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add to each trial record what its run folder says: value, status, steps, time, tokens, emissions."""
    trials = []
    for r in records:
        run_dir = spec.dir / r["run_dir"] if r.get("run_dir") else None
        try:
            s = read_summary(run_dir) if run_dir else {}
        except (OSError, ValueError):
            s = {}
        trials.append(
            {
                **r,
                "value": metric_value(s, spec.metric) if s else None,
                "status": s.get("status"),
                "steps": s.get("steps"),
                "tokens": s.get("tokens"),
                "wall_time_s": s.get("wall_time_s"),
                "emissions": _emissions(s),
            }
        )
    return trials


def best_trial(trials: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The best completed trial; pruned trials stopped early, so their values are not comparable."""
    done = [t for t in trials if t["state"] == "completed" and t["value"] is not None]
    if not done:
        return None
    pick = min if direction == "minimize" else max
    return pick(done, key=lambda t: t["value"])


def _total(trials: list[dict[str, Any]], key: str, section: str | None = None) -> float | None:
    values = [(t.get(section) or {}).get(key) if section else t.get(key) for t in trials]
    numbers = [v for v in values if isinstance(v, (int, float))]
    return float(sum(numbers)) if numbers else None


def totals(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over every trial that ran (pruned and failed ones cost energy too)."""
    return {
        "trials": len(trials),
        **{s: sum(t["state"] == s for t in trials) for s in STATES},
        "wall_time_s": _total(trials, "wall_time_s"),
        "tokens": _total(trials, "tokens"),
        "energy_kwh": _total(trials, "energy_kwh", "emissions"),
        "co2_kg": _total(trials, "co2_kg", "emissions"),
        "trials_with_emissions": sum(1 for t in trials if t.get("emissions")),
    }


def best_command(spec: SweepSpec, best: dict[str, Any]) -> str:
    return shlex.join(spec.train_command(best["overrides"]))


def experiment_name(spec: SweepSpec) -> str:
    return f"{spec.name}_best"


def experiment_yaml(spec: SweepSpec, best: dict[str, Any]) -> str:
    """The best trial as an `experiment/` config: group choices become `override /group: option`
    defaults, values become nested keys. Run it with `train.py --config-dir <sweep dir> experiment=...`."""
    defaults: list[Any] = []
    body: Any = OmegaConf.create({})
    notes = []
    for o in OverridesParser.create().parse_overrides(spec.trial_overrides + list(best["overrides"])):
        key = o.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if o.is_delete() or o.package is not None:
            notes.append(f"# not expressed here, add it on the command line: {o.input_line}")
            continue
        if key in spec.optional_groups:  # e.g. another experiment this one builds on, or debug=fast
            defaults.append(f"/{key}/{o.value()}")
        elif key in spec.groups:
            defaults.append({f"override /{key}": o.value()})
        else:
            OmegaConf.update(body, key, o.value(), force_add=True)
    defaults.sort(key=lambda d: isinstance(d, dict))  # Hydra wants plain includes before overrides
    doc = (
        OmegaConf.create({"defaults": defaults, **as_dict(body, "the best trial's overrides", resolve=False)})
        if defaults
        else body
    )
    header = [
        "# @package _global_",
        f"# Best trial of sweep '{spec.name}': trial {best['number']}, {spec.metric}={best['value']:.6g}.",
        f"# Run it: python {spec.train_script.name} --config-dir {spec.dir} experiment={experiment_name(spec)}",
        "# (or copy this file into conf/experiment/ and drop --config-dir).",
        *notes,
    ]
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(doc)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_sweep_files(
    spec: SweepSpec, records: list[dict[str, Any]], status: str, error: str | None = None
) -> dict[str, Any]:
    """Write sweep_summary.json (+ the best trial's command and experiment); return the summary."""
    trials = enrich(spec, records)
    best = best_trial(trials, spec.direction)
    summary: dict[str, Any] = {
        "name": spec.name,
        "status": status,
        "dir": str(spec.dir),
        "backend": spec.backend,
        "metric": spec.metric,
        "direction": spec.direction,
        "n_trials": spec.n_trials,
        "space": spec_dict(spec)["space"],
        "trial_overrides": spec.trial_overrides,
        "totals": totals(trials),
        "best": None,
        "trials": trials,
    }
    if error:
        summary["error"] = error
    if best is not None:
        exp_path = spec.dir / "experiment" / f"{experiment_name(spec)}.yaml"
        exp_path.parent.mkdir(parents=True, exist_ok=True)
        _write(exp_path, experiment_yaml(spec, best))
        command = best_command(spec, best)
        _write(
            spec.dir / BEST_COMMAND_FILE,
            f"#!/bin/sh\n# best trial of sweep '{spec.name}': trial {best['number']}, "
            f"{spec.metric}={best['value']:.6g}\n{command}\n",
        )
        summary["best"] = {
            "number": best["number"],
            "value": best["value"],
            "overrides": best["overrides"],
            "params": best.get("params"),
            "run_dir": best["run_dir"],
            "command": command,
            "experiment": str(exp_path.relative_to(spec.dir)),
            "experiment_command": f"python {spec.train_script.name} --config-dir {spec.dir} "
            f"experiment={experiment_name(spec)}",
        }
    save_summary(spec, summary)
    return summary


def save_summary(spec: SweepSpec, summary: dict[str, Any]) -> None:
    _write(spec.dir / SUMMARY_FILE, json.dumps(summary, indent=1, default=str) + "\n")
