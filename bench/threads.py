"""Torch threads on a shared CPU: the plain loop and `python train.py` with 1 and 2 threads, alone and beside one
competing CPU-bound process, and what `threads=auto` (lmforge/threads.py) picks in each case.

    python bench/threads.py                          # writes bench/results/threads.json
    python bench/threads.py --rounds 1 --steps 30 --out /tmp/threads.json    # smoke run

The tiny GPT of bench/overhead.py (4 layers, d 128, batch 12 x 64, 32-true), its two sides measured the same way
(steady-state wall seconds per step, bench/step_timer.py). The competitor is one Python process spinning on one
core for as long as a measurement runs: what another user's job, a tokenizer or a second run does to a 2-core
machine. Rounds interleave the settings, so drifting load hits each alike; the report gives the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import COMMON, REPO, SIZES, lmforge_run, run_plain_in_subprocess  # noqa: E402

SPIN = "while True: pass"


@contextmanager
def competitor(on: bool):
    proc = subprocess.Popen([sys.executable, "-c", SPIN]) if on else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def measure(side: str, threads: int | None, busy: bool, steps: int, folder: Path) -> dict:
    """Seconds per step of one side; threads None: lmforge's threads=auto (OMP_NUM_THREADS unset)."""
    os.environ.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    overrides = [*COMMON, *SIZES["tiny"]]
    with competitor(busy):
        if side == "plain":
            return run_plain_in_subprocess(overrides, steps)
        out = lmforge_run(overrides, steps, folder)
        out["threads_chosen"] = json.loads((folder / "summary.json").read_text())["scale"]["threads"]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "threads.json")
    args = parser.parse_args()
    settings = [
        (side, threads, busy)
        for busy in (False, True)
        for side, threads in (("plain", 1), ("plain", 2), ("lmforge", 1), ("lmforge", 2), ("lmforge", None))
    ]
    samples: dict[str, list[dict]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (side, threads, busy) in enumerate(settings if r % 2 == 0 else settings[::-1]):
                key = f"{side} threads={threads or 'auto'} {'beside 1 busy process' if busy else 'alone'}"
                got = measure(side, threads, busy, args.steps, Path(tmp) / f"{r}-{i}")
                samples.setdefault(key, []).append(got)
                chosen = f" (auto chose {got['threads_chosen']})" if threads is None else ""
                print(f"round {r + 1}: {key}: {got['step_time_s'] * 1e3:.1f} ms/step{chosen}", flush=True)
    results = {}
    for key, runs in samples.items():
        results[key] = {
            "step_time_s": statistics.median(run["step_time_s"] for run in runs),
            "step_cpu_s": statistics.median(run["step_cpu_s"] for run in runs),
            "threads_chosen": [run["threads_chosen"] for run in runs if "threads_chosen" in run] or None,
            "rounds": runs,
        }

    def ratio(a: str, b: str) -> float:
        return results[a]["step_time_s"] / results[b]["step_time_s"]

    ratios = {}
    for busy in ("alone", "beside 1 busy process"):
        for side in ("plain", "lmforge"):
            two, one = f"{side} threads=2 {busy}", f"{side} threads=1 {busy}"
            ratios[f"{side} {busy}: 2 threads / 1 thread"] = ratio(two, one)
        ratios[f"lmforge {busy}: auto / 1 thread"] = ratio(f"lmforge threads=auto {busy}", f"lmforge threads=1 {busy}")
    for side in ("plain", "lmforge"):
        for t in (1, 2):
            ratios[f"{side} threads={t}: beside 1 busy / alone"] = ratio(
                f"{side} threads={t} beside 1 busy process", f"{side} threads={t} alone"
            )
    report = {
        "what": "steady-state wall seconds per step of the tiny GPT (bench/overhead.py's), by torch threads, alone "
        "and beside one CPU-bound process; medians of interleaved rounds",
        "machine": {"cpu_count": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()},
        "steps": args.steps,
        "rounds": args.rounds,
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    for key, r in results.items():
        print(f"{key:45} {r['step_time_s'] * 1e3:8.1f} ms/step")
    for key, value in ratios.items():
        print(f"{key:50} {value:6.2f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
