"""The sweep report in `<sweep dir>/report/`: the emissions report over the trials' run folders
(lmforge.report: tables, totals, loss-vs-CO2 and power plots) plus what only a sweep has —
the metric against each searched parameter, the search history, the best trial and the
sweep's total cost — in `sweep.html` / `sweep.md`, with the PNGs under `plots/`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmforge.report.plots import save_figure
from lmforge.report.render import Block, HtmlPage, to_html, to_markdown
from lmforge.sweep.spec import SweepSpec

COLORS = {"completed": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "interrupted": "tab:gray"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_params(spec: SweepSpec, trials: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per searched parameter: the trial's metric against the value it was given."""
    pts = [t for t in trials if t.get("value") is not None and t.get("params")]
    if not pts:
        return None
    plt = _plt()
    n = len(spec.space)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    best = min if spec.direction == "minimize" else max
    done = [t for t in pts if t["state"] == "completed"]
    best_t = best(done, key=lambda t: t["value"]) if done else None
    for ax, p in zip(axes.flat, spec.space):
        categorical = p.kind == "choice" or not all(isinstance(t["params"].get(p.key), (int, float)) for t in pts)
        labels = [str(c) for c in p.choices] if p.kind == "choice" else None
        for state in COLORS:
            sel = [t for t in pts if t["state"] == state and p.key in t["params"]]
            if not sel:
                continue
            xs = [labels.index(str(t["params"][p.key])) if categorical and labels else t["params"][p.key] for t in sel]
            ax.scatter(
                xs,
                [t["value"] for t in sel],
                color=COLORS[state],
                label=state,
                zorder=3,
                facecolors="none" if state != "completed" else COLORS[state],
            )
        if best_t is not None and p.key in best_t["params"]:
            bx = labels.index(str(best_t["params"][p.key])) if categorical and labels else best_t["params"][p.key]
            ax.scatter(
                [bx], [best_t["value"]], marker="*", s=220, color="gold", edgecolors="black", zorder=4, label="best"
            )
        if categorical and labels:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        elif p.log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide over a short log range
        ax.set_xlabel(p.key)
        ax.set_ylabel(spec.metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{spec.metric} by parameter (pruned: value when stopped)")
    return save_figure(plt, fig, path)


def plot_history(spec: SweepSpec, trials: list[dict[str, Any]], path: Path) -> Path | None:
    pts = sorted((t for t in trials if t.get("value") is not None), key=lambda t: t["number"])
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for state in COLORS:
        sel = [t for t in pts if t["state"] == state]
        if sel:
            ax.scatter(
                [t["number"] for t in sel], [t["value"] for t in sel], color=COLORS[state], label=state, zorder=3
            )
    pick = min if spec.direction == "minimize" else max
    xs, ys, best = [], [], None
    for t in pts:
        if t["state"] == "completed":
            best = t["value"] if best is None else pick(best, t["value"])
        if best is not None:
            xs.append(t["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.set_xlabel("trial")
    ax.set_ylabel(spec.metric)
    ax.set_title(f"Sweep '{spec.name}': {spec.metric} by trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


SWEEP_PAGE = HtmlPage(
    head="<!doctype html><meta charset='utf-8'><title>sweep</title>\n"
    "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}pre{background:#f4f4f4;padding:8px;"
    "white-space:pre-wrap}</style>",
    separator="\n",
    table="<table><tr>{head}</tr>{rows}</table>",
    image="<img alt='{alt}' style='max-width:100%' src='data:image/png;base64,{data}'>",
)


def _blocks(
    spec: SweepSpec, summary: dict[str, Any], plots: dict[str, Path], emissions_report: str | None
) -> list[Block]:
    t, best = summary["totals"], summary.get("best")
    blocks: list[Block] = [
        ("h1", f"Sweep '{spec.name}'"),
        ("p", f"{spec.backend} search of {spec.metric} ({spec.direction}) in {spec.dir}; status {summary['status']}."),
    ]
    blocks.append(
        (
            "table",
            [
                "trials",
                "completed",
                "pruned",
                "failed",
                "interrupted",
                "wall time (s)",
                "tokens",
                "energy (kWh)",
                "CO2e (kg)",
            ],
            [
                [
                    t["trials"],
                    t["completed"],
                    t["pruned"],
                    t["failed"],
                    t["interrupted"],
                    _fmt(t["wall_time_s"]),
                    _fmt(t["tokens"]),
                    _fmt(t["energy_kwh"]),
                    _fmt(t["co2_kg"]),
                ]
            ],
        )
    )
    if t["trials"] and t["trials_with_emissions"] < t["trials"]:
        blocks.append(
            (
                "p",
                f"Emissions totals cover the {t['trials_with_emissions']} of {t['trials']} trials whose "
                "run folders measured them.",
            )
        )
    if best:
        blocks += [
            ("h2", "Best trial"),
            ("p", f"trial {best['number']}: {spec.metric} = {_fmt(best['value'], 6)}"),
            ("code", best["command"]),
            ("code", best["experiment_command"]),
        ]
    keys = [p.key for p in spec.space]
    rows = [
        [
            tr["number"],
            tr["state"],
            *[_fmt(tr["params"].get(k)) for k in keys],
            _fmt(tr["value"]),
            _fmt(tr["steps"]),
            _fmt(tr["wall_time_s"], 3),
            _fmt((tr.get("emissions") or {}).get("co2_kg")),
        ]
        for tr in summary["trials"]
    ]
    blocks += [("h2", "Trials"), ("table", ["trial", "state", *keys, spec.metric, "steps", "time (s)", "kgCO2e"], rows)]
    for title, p in plots.items():
        blocks += [("h2", title), ("img", p.stem, p)]
    if emissions_report:
        blocks.append(("p", emissions_report))
    return blocks


def emissions_report(sweep_dir: Path, out: Path) -> str:
    """The emissions report (lmforge.report) over the trials; a one-line note of what happened."""
    try:
        from lmforge.report import build_report
    except ImportError:
        return "The emissions report (python -m lmforge.report) is not available in this install."
    try:
        data = build_report([sweep_dir], out)
    except Exception as e:  # the sweep's own report must not be lost to a problem in the other one
        return f"The emissions report failed: {type(e).__name__}: {e}"
    n = data.get("totals", {}).get("runs", "?")
    return f"Emissions report over {n} run folders: report.html / report.md next to this file."


def write_report(spec: SweepSpec, summary: dict[str, Any]) -> Path:
    """Write `<sweep dir>/report/{sweep.html, sweep.md, plots/}` and the emissions report next to them."""
    out = spec.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    note = emissions_report(spec.dir, out)
    plots: dict[str, Path] = {}
    try:
        for title, fn, name in (
            ("Metric by parameter", plot_metric_vs_params, "sweep_params.png"),
            ("Search history", plot_history, "sweep_history.png"),
        ):
            p = fn(spec, summary["trials"], out / "plots" / name)
            if p is not None:
                plots[title] = p
    except ImportError:
        note += " Plots need matplotlib: pip install 'lmforge[report]'."
    blocks = _blocks(spec, summary, plots, note)
    (out / "sweep.md").write_text(to_markdown(blocks, out), encoding="utf-8")
    (out / "sweep.html").write_text(to_html(blocks, SWEEP_PAGE), encoding="utf-8")
    return out / "sweep.html"
