"""Render blocks as Markdown (PNG links) and self-contained HTML (PNGs inlined as base64).

The run report (lmforge.report) and the sweep report (lmforge.sweep.report) both describe themselves as one list
of blocks and render it here, so the Markdown and HTML of a report never disagree and the two reports never drift.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lmforge.report.collect import Run, Sweep, totals

# ("h1" | "h2" | "h3" | "p" | "code", text), ("table", headers, rows) or ("img", alt text, PNG path).
# Table cells may be any value (str() of it is shown); "**x**" is Markdown bold, shown plain in HTML.
Block = tuple[Any, ...]

RUN_HEADERS = [
    "run",
    "objective",
    "model",
    "params",
    "tokens",
    "wall time",
    "val loss",
    "val ppl",
    "kWh",
    "kgCO2e",
    "gCO2e/Mtok",
    "method",
    "notes",
]
TOTAL_HEADERS = ["scope", "runs", "wall time", "tokens", "kWh", "kgCO2e", "missing emissions"]


def _g(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _count(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, s in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= s:
            return f"{x / s:.3g}{unit}"
    return f"{x:.0f}"


def _dur(s: float | None) -> str:
    if s is None:
        return "–"
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def run_row(r: Run) -> list[str]:
    notes = "; ".join(r.notes)
    if r.emissions_ok and r.emissions_source != "summary.json" and not notes:
        notes = f"from {r.emissions_source}"
    return [
        r.name,
        r.objective or "–",
        r.model or "–",
        _count(r.params),
        _count(r.tokens),
        _dur(r.wall_time_s),
        _g(r.val_loss),
        _g(r.val_ppl),
        _g(r.energy_kwh),
        _g(r.co2_kg),
        _g(r.g_per_mtok),
        r.method or "–",
        ("⚠ " + notes) if notes else "",
    ]


def total_row(scope: str, t: dict[str, Any]) -> list[str]:
    miss = t["missing_emissions"]
    return [
        scope,
        str(t["runs"]),
        _dur(t["wall_time_s"]),
        _count(t["tokens"]),
        _g(t["energy_kwh"]),
        _g(t["co2_kg"]),
        (f"⚠ {miss} (totals are partial)" if miss else "0"),
    ]


def build_blocks(sweeps: list[Sweep], plots: dict[str, dict[str, Path]], sources: list[str]) -> list[Block]:
    all_runs = [r for sw in sweeps for r in sw.runs]
    blocks: list[Block] = [
        ("h1", "lmforge report: cost of runs"),
        (
            "p",
            f"Generated {datetime.now():%Y-%m-%d %H:%M} from {', '.join(sources)}. "
            "Energy and CO2e are as measured by CodeCarbon (see each run's method); "
            "⚠ marks runs with missing or partial data.",
        ),
        ("h2", "Totals"),
        (
            "table",
            TOTAL_HEADERS,
            [total_row(sw.name, sw.totals()) for sw in sweeps]
            + ([total_row("all", totals(all_runs))] if len(sweeps) > 1 else []),
        ),
    ]
    for sw in sweeps:
        blocks.append(("h2", f"Sweep {sw.name}" if sw.path else "Runs"))
        if sw.path:
            blocks.append(
                ("p", f"Folder: {sw.path}" + (f". Sweep: {' '.join(sw.sweep_overrides)}" if sw.sweep_overrides else ""))
            )
        if sw.sweep_summary:
            scal = {k: v for k, v in sw.sweep_summary.items() if isinstance(v, (str, int, float, bool))}
            if scal:
                blocks.append(("p", "sweep_summary.json: " + ", ".join(f"{k}={v}" for k, v in scal.items())))
        rows = [run_row(r) for r in sw.runs]
        rows.append(
            ["**total**"]
            + [""] * 4
            + [_dur(sw.totals()["wall_time_s"])]
            + [""] * 2
            + [_g(sw.totals()["energy_kwh"]), _g(sw.totals()["co2_kg"])]
            + [""] * 3
        )
        blocks.append(("table", RUN_HEADERS, rows))
        labelled = [r for r in sw.runs if r.label != r.name]
        if labelled:
            blocks.append(("p", "Configurations: " + "; ".join(f"{r.name} = {r.label}" for r in labelled)))
    titles = {
        "loss_vs_co2": "Validation loss vs kgCO2e (Pareto front in red)",
        "energy_per_token": "Energy per token by configuration",
        "power": "Power over time",
    }
    for scope, made in plots.items():
        if made:
            blocks.append(("h2", f"Plots: {scope}"))
            for kind, path in made.items():
                title = titles.get(kind, kind)
                blocks += [("h3", title), ("img", title, path)]
    return blocks


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block], out_dir: Path) -> str:
    """Markdown with the images linked relative to `out_dir` (the folder the .md file is written to)."""
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += [f"{'#' * int(kind[1])} {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "code":
            lines += ["```", b[1], "```", ""]
        elif kind == "table":
            _, headers, rows = b
            lines.append("| " + " | ".join(str(h) for h in headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            rel = Path(b[2]).resolve().relative_to(out_dir.resolve())
            lines += [f"![{b[1]}]({rel.as_posix()})", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class HtmlPage:
    """What is a page's own when blocks become HTML: its head (doctype, title, stylesheet) and end, what separates
    the blocks, and how it spells a table (`{head}`: the header cells, `{rows}`: the rows) and an image (`{alt}`,
    `{data}`: the PNG in base64). Each report keeps the markup it has always had."""

    head: str
    foot: str = ""
    separator: str = ""
    table: str = "<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    image: str = '<img alt="{alt}" src="data:image/png;base64,{data}">'


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}tr:last-child td{font-weight:600}img{max-width:100%;border:1px solid #eee}"""

RUN_REPORT_PAGE = HtmlPage(
    head=f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>lmforge report</title><style>{_CSS}</style>'
    "</head><body>",
    foot="</body></html>",
)


def _html_block(b: Block, page: HtmlPage) -> str:
    e = html.escape
    kind = b[0]
    if kind in ("h1", "h2", "h3"):
        return f"<{kind}>{e(b[1])}</{kind}>"
    if kind == "p":
        return f"<p>{e(b[1])}</p>"
    if kind == "code":
        return f"<pre>{e(b[1])}</pre>"
    if kind == "table":
        _, headers, rows = b
        head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
        cells = ("".join(f"<td>{e(str(c).replace('**', ''))}</td>" for c in row) for row in rows)
        return page.table.format(head=head, rows="".join(f"<tr>{c}</tr>" for c in cells))
    if kind == "img":
        return page.image.format(alt=e(b[1]), data=base64.b64encode(Path(b[2]).read_bytes()).decode("ascii"))
    raise ValueError(f"unknown report block {kind!r}")


def to_html(blocks: list[Block], page: HtmlPage = RUN_REPORT_PAGE) -> str:
    """One self-contained HTML page: the images are inlined, so the file can be mailed or uploaded alone."""
    return page.separator.join([page.head, *(_html_block(b, page) for b in blocks)]) + page.foot + "\n"
