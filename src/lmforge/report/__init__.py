"""Report over run and sweep folders: tables of cost and quality, totals, plots.

    python -m lmforge.report PATH... --out DIR

writes ``DIR/report.md`` (PNG links under ``DIR/plots/``), ``DIR/report.html`` (the same,
self-contained) and ``DIR/report.json`` (the numbers, for scripts and tests).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lmforge.report.collect import ReportError, Run, Sweep, discover, totals

__all__ = ["ReportError", "Run", "Sweep", "build_report", "discover"]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "sweep"


def build_report(paths: list[str | Path], out: str | Path, plots: bool = True) -> dict[str, Any]:
    """Collect runs under ``paths`` and write the report into ``out``; returns report.json's dict."""
    from lmforge.report.render import build_blocks, to_html, to_markdown

    out = Path(out)
    sweeps = discover(paths)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, dict[str, Path]] = {}
    if plots:
        from lmforge.report.plots import make_plots

        all_runs = [r for sw in sweeps for r in sw.runs]
        if len(sweeps) == 1:
            made[sweeps[0].name] = make_plots(all_runs, out / "plots")
        else:
            made["all runs"] = make_plots(all_runs, out / "plots", prefix="all_")
            for sw in sweeps:  # per-sweep plots; loose runs only appear in "all runs"
                if sw.path is not None and len(sw.runs) > 1:
                    made[sw.name] = make_plots(sw.runs, out / "plots", prefix=_slug(sw.name) + "_")
    blocks = build_blocks(sweeps, made, [str(p) for p in paths])
    (out / "report.md").write_text(to_markdown(blocks, out), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks), encoding="utf-8")
    data = {
        "sweeps": [
            {
                "name": sw.name,
                "path": str(sw.path) if sw.path else None,
                "sweep_overrides": sw.sweep_overrides,
                "totals": sw.totals(),
                "runs": [r.to_dict() for r in sw.runs],
            }
            for sw in sweeps
        ],
        "totals": totals([r for sw in sweeps for r in sw.runs]),
        "plots": {scope: {k: str(v.relative_to(out)) for k, v in m.items()} for scope, m in made.items()},
        "files": {"markdown": "report.md", "html": "report.html"},
    }
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    return data
