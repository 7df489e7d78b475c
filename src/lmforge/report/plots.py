"""PNG plots for the report. matplotlib is the optional ``report`` extra, imported lazily."""

from __future__ import annotations

from pathlib import Path

from lmforge.report.collect import ReportError, Run


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError(
            "plots need matplotlib: pip install 'lmforge[report]' (or pass --no-plots for tables only)"
        ) from None
    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (cost, loss), both minimised, by ascending cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _short(label: str, n: int = 40) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def plot_loss_vs_co2(runs: list[Run], path: Path) -> Path | None:
    pts = [(r.co2_kg, r.val_loss, r) for r in runs if r.co2_kg is not None and r.val_loss is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.scatter(xs, ys, color="tab:blue", zorder=3, label="runs")
    front = pareto_front([(x, y) for x, y in zip(xs, ys)])
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx, fy, where="post", color="tab:red", zorder=2, label="Pareto front")
    ax.scatter(fx, fy, facecolors="none", edgecolors="tab:red", s=120, zorder=4)
    for i in front:
        ax.annotate(_short(pts[i][2].label, 28), (xs[i], ys[i]), textcoords="offset points", xytext=(6, 6), fontsize=7)
    if min(xs) > 0 and max(xs) / min(xs) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("kgCO2e")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss vs emissions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_energy_per_token(runs: list[Run], path: Path) -> Path | None:
    pts = [(r.label, r.j_per_token) for r in runs if r.j_per_token is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * len(pts)))
    ax.barh([_short(p[0]) for p in pts], [p[1] for p in pts], color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("energy per training token (J)")
    ax.set_title("Energy per token by configuration")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(plt, fig, path)


def plot_power(runs: list[Run], path: Path, max_lines: int = 20) -> Path | None:
    series = [r for r in runs if len(r.timeline) >= 2][:max_lines]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    span = max(t for r in series for t, _ in r.timeline)
    scale, unit = (60.0, "min") if span > 300 else (1.0, "s")
    for r in series:
        ax.plot([t / scale for t, _ in r.timeline], [w for _, w in r.timeline], lw=1.2, label=_short(r.label, 30))
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("power (W)")
    ax.set_ylim(bottom=0)
    ax.set_title("Measured power over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def save_figure(plt, fig, path: Path) -> Path:
    """Write `fig` as a PNG (creating the folder) and free it; the sweep report saves its plots here too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(runs: list[Run], out_dir: Path, prefix: str = "") -> dict[str, Path]:
    """Every plot there is data for, as {kind: png path}."""
    made = {
        "loss_vs_co2": plot_loss_vs_co2(runs, out_dir / f"{prefix}loss_vs_co2.png"),
        "energy_per_token": plot_energy_per_token(runs, out_dir / f"{prefix}energy_per_token.png"),
        "power": plot_power(runs, out_dir / f"{prefix}power.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
