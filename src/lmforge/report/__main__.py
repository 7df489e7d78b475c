"""CLI: python -m lmforge.report PATH... --out DIR"""

from __future__ import annotations

import argparse
import sys

from lmforge.report import ReportError, build_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lmforge.report",
        description="Report time, quality, energy and CO2e over run folders and multirun/sweep folders.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run folders or multirun/sweep folders")
    p.add_argument("--out", required=True, help="folder for report.md, report.html, report.json, plots/")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    args = p.parse_args(argv)
    try:
        data = build_report(args.paths, args.out, plots=not args.no_plots)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = data["totals"]
    print(
        f"{t['runs']} runs, {t['missing_emissions']} without emissions data -> {args.out}/report.md, "
        f"{args.out}/report.html"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
