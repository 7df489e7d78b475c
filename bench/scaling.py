"""Tokens/s of one process vs two (DDP, FSDP, TP, PP) on this machine's CPUs, through `python train.py` as a user
runs it.

    python bench/scaling.py                       # writes bench/results/scaling.json
    python bench/scaling.py --rounds 1 --steps 6 --model gpt_tiny --out /tmp/scaling.json   # a quick smoke run

Every configuration trains with the same global batch (one process and TP's or PP's one replica: data.batch_size=G;
DDP/FSDP: G/2 each). PP (2 stages, 4 micro-batches of G/4) unties the embeddings, which pipeline parallelism needs:
the same matmuls, one more vocab x d_model table.
Throughput is steady state, timed inside each run on rank 0 (bench/step_timer.py: the first steps are skipped,
so process start-up, tokenizer and model building and sharding do not count). Configurations are interleaved
round by round so that changing machine load hits all alike; the report keeps every round and the median, and
the ratios to one process measured in this one run, which mean more than the absolute figures. Every process
runs one thread (OMP_NUM_THREADS=1), so two processes use two cores where one uses one: the ideal ratio is 2, and
the shortfall is the gradient all-reduce (DDP) or the all-gathers and reduce-scatters (FSDP) plus whatever else
runs on the machine. (With its default two threads, one process on a busy 2-core machine measured erratically,
356 to 1,974 tokens/s between rounds: OpenMP threads wait for each other when one is descheduled.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CONFIGS = {
    "1 process": [],
    "DDP, 2 processes": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
    "FSDP, 2 processes": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"],
    # one model over 2 ranks: one replica, so each rank reads the whole global batch
    "TP, 2 processes": ["trainer=tp", "trainer.accelerator=cpu", "trainer.devices=2"],
    # 2 pipeline stages, one replica: each batch in 4 micro-batches through torch's schedule
    **{
        f"PP {name}, 2 processes": [
            "trainer=pp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "model.net.tie_word_embeddings=false",
            f"trainer.strategy.pipeline.schedule={schedule}",
            "trainer.strategy.pipeline.microbatches=4",
        ]
        for name, schedule in (("GPipe", "gpipe"), ("1F1B", "1f1b"))
    },
}
REPLICAS = {"1 process": 1, "DDP, 2 processes": 2, "FSDP, 2 processes": 2, "TP, 2 processes": 1}
REPLICAS.update({name: 1 for name in CONFIGS if name.startswith("PP")})


def _train(args: list[str], env: dict[str, str]) -> tuple[dict, dict]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    run_dir = next(
        Path(line.split(": ", 1)[1].strip()) for line in proc.stdout.splitlines() if line.startswith("Run folder")
    )
    timer = run_dir / "step_timer.json"
    return json.loads((run_dir / "summary.json").read_text()), json.loads(timer.read_text()) if timer.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="steps per run; the first 3 are not timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default=None, help="trainer.precision (default: the config default)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scaling.json")
    args = parser.parse_args()

    from conftest import write_synthetic_corpus  # the test suite's synthetic corpus: no download

    work = Path(tempfile.mkdtemp(prefix="lmforge-scaling-"))
    pythonpath = [str(REPO / "src"), str(REPO / "bench"), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "LMFORGE_LOG_DIR": str(work / "logs"),
        "LMFORGE_CACHE_DIR": str(work / "cache"),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "OMP_NUM_THREADS": "1",
    }
    corpus = write_synthetic_corpus(work / "corpus", n_files=16, words_per_file=20000)
    tokens_per_step = args.global_batch * args.seq_len
    common = [
        f"model={args.model}",
        "data=text",
        f"data.path={corpus}",
        f"data.seq_len={args.seq_len}",
        "logger=none",
        "callbacks=none",
        "trainer.val_check_interval=100000",
        "trainer.limit_val_batches=1",
        "+trainer.enable_progress_bar=false",
        f"global_batch_size={args.global_batch}",
        f"trainer.max_steps={args.steps}",
        "+callbacks.step_timer._target_=step_timer.StepTimer",
        "+callbacks.step_timer.output_dir=${paths.output_dir}",
        f"+callbacks.step_timer.tokens_per_step={tokens_per_step}",
    ]
    if args.precision:
        common.append(f"trainer.precision={args.precision}")
    micro = {name: args.global_batch // REPLICAS[name] for name in CONFIGS}

    _train([*common, "trainer.max_steps=1", "data.batch_size=1", "global_batch_size=null"], env)  # caches, once
    rounds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    summaries: dict[str, dict] = {}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for name, extra in CONFIGS.items():
            summaries[name], timer = _train([*common, *extra, f"data.batch_size={micro[name]}"], env)
            rounds[name].append(timer["tokens_per_sec"])
            print(f"round {r + 1}, {name}: {timer['tokens_per_sec']:,.0f} tokens/s", flush=True)
    load_after = os.getloadavg()

    median = {name: statistics.median(v) for name, v in rounds.items()}
    base = median["1 process"]
    results = {
        name: {
            "tokens_per_sec_median": median[name],
            "tokens_per_sec_rounds": rounds[name],
            "ratio_to_1_process_by_round": [v / b for v, b in zip(rounds[name], rounds["1 process"])],
            "micro_batch_size": micro[name],
            "world_size": summaries[name]["scale"]["world_size"],
            "precision": summaries[name]["scale"]["precision"],
        }
        for name in CONFIGS
    }
    report = {
        "what": "steady-state training tokens/s through train.py, same global batch; ratios are to 1 process",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "config": {
            "model": args.model,
            "params": summaries["1 process"]["params"],
            "seq_len": args.seq_len,
            "global_batch_size": args.global_batch,
            "steps_per_run": args.steps,
            "rounds": args.rounds,
        },
        "results": results,
        "ratio_to_1_process": {name: median[name] / base for name in CONFIGS},
        "note": (
            "CPU, one thread per process: the ideal ratio for 2 processes is 2; the shortfall is communication "
            "(gloo) and per-process overhead. The machine was shared with other work (load averages above)."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_to_1_process"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
