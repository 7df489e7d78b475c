"""Tokens/s of one process vs two (DDP, FSDP) on this machine's CPUs, through `python train.py` as a user runs it.

    python bench/scaling.py                       # writes bench/results/scaling.json
    python bench/scaling.py --steps 4 12 --model gpt_tiny --out /tmp/scaling.json   # a quick smoke run

Every configuration trains with the same global batch (one process: data.batch_size=G; two: G/2 each). Throughput
is marginal: the extra tokens of a long run over a short one, divided by the extra wall time, which cancels process
start-up, tokenizer and model building, sharding, and the final validation. Runs are interleaved (short runs of all
configurations, then long runs) so that a change in machine load hits all alike; compare the ratios, measured in
one run, rather than absolute figures. On CPU, two processes split the same cores that one process uses with two
threads (Lightning sets OMP threads = cores / processes), so the ideal ratio is 1: the figure shows the cost of
the gradient all-reduce (DDP) or all-gathers and reduce-scatters (FSDP), not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CONFIGS = {
    "1 process": [],
    "DDP, 2 processes": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
    "FSDP, 2 processes": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"],
}


def _train(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    run_dir = next(Path(line.split(": ", 1)[1].strip()) for line in proc.stdout.splitlines()
                   if line.startswith("Run folder"))
    return wall, json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25), metavar=("SHORT", "LONG"))
    parser.add_argument("--precision", default=None, help="trainer.precision (default: the config default)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scaling.json")
    args = parser.parse_args()

    from conftest import write_synthetic_corpus  # the test suite's synthetic corpus: no download

    work = Path(tempfile.mkdtemp(prefix="lmforge-scaling-"))
    env = {**os.environ, "LMFORGE_LOG_DIR": str(work / "logs"), "LMFORGE_CACHE_DIR": str(work / "cache"),
           "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    corpus = write_synthetic_corpus(work / "corpus", n_files=16, words_per_file=20000)
    common = [f"model={args.model}", "data=text", f"data.path={corpus}", f"data.seq_len={args.seq_len}",
              "logger=none", "callbacks=none", "trainer.val_check_interval=100000", "trainer.limit_val_batches=1",
              "trainer.enable_progress_bar=false", f"global_batch_size={args.global_batch}"]
    if args.precision:
        common.append(f"trainer.precision={args.precision}")
    micro = {name: args.global_batch // (2 if extra else 1) for name, extra in CONFIGS.items()}

    _train([*common, "trainer.max_steps=1", "data.batch_size=1"], env)  # tokenizer and token cache, once
    runs: dict[str, dict[int, tuple[float, dict]]] = {name: {} for name in CONFIGS}
    load_before = os.getloadavg()
    for steps in args.steps:
        for name, extra in CONFIGS.items():
            runs[name][steps] = _train([*common, *extra, f"trainer.max_steps={steps}",
                                        f"data.batch_size={micro[name]}"], env)
            print(f"{name}: {steps} steps in {runs[name][steps][0]:.1f}s", flush=True)
    load_after = os.getloadavg()

    short, long = args.steps
    results = {}
    for name in CONFIGS:
        (wall_s, s_short), (wall_l, s_long) = runs[name][short], runs[name][long]
        tokens = s_long["tokens"] - s_short["tokens"]
        results[name] = {"tokens_per_sec": tokens / (wall_l - wall_s), "micro_batch_size": micro[name],
                         "world_size": s_long["scale"]["world_size"], "precision": s_long["scale"]["precision"],
                         "wall_s": {str(short): wall_s, str(long): wall_l}}
    base = results["1 process"]["tokens_per_sec"]
    report = {
        "what": "marginal training tokens/s through train.py, same global batch; ratios are to 1 process",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "config": {"model": args.model, "seq_len": args.seq_len, "global_batch_size": args.global_batch,
                   "steps": list(args.steps), "params": runs["1 process"][long][1]["params"]},
        "results": results,
        "ratio_to_1_process": {name: r["tokens_per_sec"] / base for name, r in results.items()},
        "note": ("CPU: the processes share the cores one process uses with threads, so the ideal ratio is 1; "
                 "the shortfall is communication (gloo) and per-process overhead. The machine was shared with "
                 "other work (load averages above)."),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_to_1_process"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
