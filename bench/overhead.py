"""What `python train.py` costs per step beyond the model: lmforge against a plain PyTorch loop, side by side.

    python bench/overhead.py                                   # writes bench/results/overhead.json
    python bench/overhead.py --rounds 1 --steps 30 --sizes tiny --out /tmp/overhead.json    # smoke run
    python bench/overhead.py --sizes micro --variants no_progress no_wandb bare     # where the difference goes

Both train the same net (lmforge's GPT, built from the same config) on the same token stream (lmforge's data
module: the corpus tokenized and packed the same way), with the same optimizer (AdamW, decay on matrices only),
schedule (linear warm-up then cosine), gradient clipping (1.0) and precision (32-true), one process, torch's
default threads. The plain loop is only that: a batch from the loader, forward, loss, backward, clip, step,
schedule. lmforge runs as a user runs it, with its default callbacks and loggers on (throughput/MFU, emissions
tracking, checkpoints on the step clock, samples, the progress bar, W&B offline and CSV).

Steady state: both sides read the same two clocks at the end of every optimizer step (bench/step_timer.py: wall
and the process's CPU time; lmforge through a bench-only callback added to the run), leave out the first 5 steps
and average the rest with the slowest 2% dropped (on both sides: lmforge's checkpoint saves on the step clock,
garbage collections, a burst of load), so the end-of-run validation is outside the figure. On a machine other
work is loading, wall time measures the wait for a core too; CPU time measures the work done, and is the figure
to read there (`--threads 1` keeps each side to one thread, so that the two are comparable under contention).
Each round runs both, in alternating order, as separate processes, so load on the machine hits them alike; the
report gives the median over rounds of each and the ratio of the medians, and every round's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5  # steps left out of the figure, as callbacks.throughput.warmup_steps
CLOCKS = (("wall", "step_time_s"), ("cpu", "step_cpu_s"))  # the two clocks both sides read, by figure name
TRIM = 0.02  # the slowest share of steps left out on both sides (checkpoint saves, collections, load bursts)

# The two sizes issue 18 names: a tiny GPT (0.8M parameters, character vocabulary), and the default model=gpt; and
# a GPT so small that a step is nearly all framework: the difference there is what lmforge costs per step, in ms.
SIZES = {
    "micro": [
        "model.net.n_layer=1",
        "model.net.n_head=1",
        "model.net.d_model=16",
        "model.net.max_seq_len=16",
        "tokenizer=char",
        "data.seq_len=16",
        "data.batch_size=2",
    ],
    "tiny": [
        "model.net.n_layer=4",
        "model.net.n_head=4",
        "model.net.d_model=128",
        "model.net.max_seq_len=64",
        "tokenizer=char",
        "data.seq_len=64",
        "data.batch_size=12",
    ],
    "default": [],
}
STEPS = {"micro": 600, "tiny": 600, "default": 150}
# `--variants`: lmforge runs with one piece of observability switched off each, beside the default run and the plain
# loop, to find where the difference goes (each variant is one more lmforge run per round).
VARIANTS = {
    "no_wandb": ["logger=csv"],
    "bar_4hz": ["+callbacks.progress.refresh_rate=4"],
    "no_progress": ["~callbacks.progress", "+trainer.enable_progress_bar=false"],
    "no_emissions": ["~callbacks.emissions"],
    "no_samples": ["~callbacks.samples"],
    "no_throughput": ["~callbacks.throughput"],
    "bare": [
        "logger=none",
        "~callbacks.progress",
        "+trainer.enable_progress_bar=false",
        "~callbacks.emissions",
        "~callbacks.samples",
        "~callbacks.throughput",
    ],
}
COMMON = ["model=gpt", "data=shakespeare", "trainer.precision=32-true"]


def steady(per_step_s: list[float]) -> float:
    """Mean seconds per step after WARMUP steps, the slowest TRIM of them left out."""
    kept = sorted(per_step_s[WARMUP:])
    kept = kept[: max(1, round(len(kept) * (1 - TRIM)))]
    return sum(kept) / len(kept)


def figures(timed: dict[str, list[float]]) -> dict[str, float]:
    return {"step_time_s": steady(timed["step_wall_s"]), "step_cpu_s": steady(timed["step_cpu_s"])}


def plain_loop(overrides: list[str], steps: int) -> dict[str, float]:
    """The raw PyTorch loop, in this process: seconds per step after WARMUP steps."""
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "bench"))
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import lmforge  # noqa: F401  (registers the config resolvers)
    from lmforge.objectives.clm import CausalLM, PackedCausalBatches, next_token_loss
    from lmforge.train import VOCAB_MULTIPLE, round_up

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    data.build(CausalLM.special_tokens)
    data.set_batch_builder(PackedCausalBatches(block_len=cfg.data.seq_len, eos_id=data.special_ids.get("eos")))
    net = instantiate(cfg.model.net, vocab_size=round_up(data.vocab_size, VOCAB_MULTIPLE))
    net.init_weights()
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    optimizer = instantiate(cfg.model.optimizer)(
        [{"params": decay, "weight_decay": cfg.model.optimizer.weight_decay}, {"params": no_decay, "weight_decay": 0}]
    )
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer, total_steps=steps)
    from step_timer import clocks, per_step

    marks = [clocks()]
    batches = iter(())
    while len(marks) <= steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(data.train_dataloader())
            batch = next(batches)
        logits = net(batch["input_ids"])
        loss, _ = next_token_loss(logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        marks.append(clocks())
    return {**figures(per_step(marks)), "final_loss": float(loss)}


def lmforge_run(overrides: list[str], steps: int, folder: Path, variant: list[str] = ()) -> dict[str, float]:
    """`python train.py` as a user types it (or with a `variant`'s overrides), plus the bench's step clock."""
    args = [
        *overrides,
        *variant,
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",  # one validation, at the end: not in the figure
        f"hydra.run.dir={folder}",
        "+callbacks.step_timer._target_=step_timer.StepTimer",
        "+callbacks.step_timer.output_dir=${paths.output_dir}",
        "+callbacks.step_timer.tokens_per_step=1",
        "+callbacks.step_timer.skip=0",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    timed = json.loads((folder / "step_timer.json").read_text())
    return {
        **figures(timed),
        "perf_step_time_s": summary.get("perf", {}).get("step_time_s"),  # lmforge's own figure, for comparison
        "threads": summary["scale"].get("threads"),  # what threads=auto chose (the plain loop: torch's default)
        "final_loss": summary["metrics"].get("train/loss", 0.0),
    }


def run_plain_in_subprocess(overrides: list[str], steps: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--plain", "--steps", str(steps), "--out", out.name, "--", *overrides]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the plain loop failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 600 tiny, 150 default)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS), help="lmforge ablations to add")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overhead.json")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # one plain-loop run (internal)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        args.out.write_text(json.dumps(plain_loop(args.overrides, args.steps)))
        return

    if args.threads:  # inherited by both sides' processes
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            overrides, steps = [*COMMON, *SIZES[size]], args.steps or STEPS[size]
            rounds: list[dict] = []
            results[size] = {"overrides": overrides, "steps": steps, "rounds": rounds}
            for r in range(args.rounds):
                order = ["plain", "lmforge", *args.variants]
                order = order if r % 2 == 0 else order[::-1]
                measured = {}
                for which in order:
                    if which == "plain":
                        measured[which] = run_plain_in_subprocess(overrides, steps)
                    else:
                        folder = Path(tmp) / f"{size}-{which}-{r}"
                        measured[which] = lmforge_run(overrides, steps, folder, VARIANTS.get(which, []))
                rounds.append(measured)
                ms = {f"{w}_{c}": measured[w][k] * 1e3 for w in measured for c, k in CLOCKS}
                print(
                    f"{size} round {r + 1}: wall plain {ms['plain_wall']:.2f} ms/step, "
                    f"lmforge {ms['lmforge_wall']:.2f}; "
                    f"CPU plain {ms['plain_cpu']:.2f}, lmforge {ms['lmforge_cpu']:.2f}"
                    + "".join(f"; {v} wall {ms[v + '_wall']:.2f} CPU {ms[v + '_cpu']:.2f}" for v in args.variants),
                    flush=True,
                )
                for clock, key in CLOCKS:  # the medians so far: a run stopped early keeps what it measured
                    plain = statistics.median(m["plain"][key] for m in rounds)
                    ours = statistics.median(m["lmforge"][key] for m in rounds)
                    results[size][clock] = {
                        "plain_s": plain,
                        "lmforge_s": ours,
                        "ratio_of_medians": ours / plain,
                        "overhead_ms_per_step": (ours - plain) * 1e3,
                    }
                    for v in args.variants:
                        theirs = statistics.median(m[v][key] for m in rounds)
                        results[size][clock][f"{v}_s"] = theirs
                        results[size][clock][f"{v}_ratio_of_medians"] = theirs / plain
                write_report(args.out, results, done=False)
    write_report(args.out, results, done=True)
    print(f"\n{'size':8} {'clock':5} {'plain ms':>9} {'lmforge ms':>11} {'ratio':>7}")
    for size, r in results.items():
        for clock in ("wall", "cpu"):
            c = r[clock]
            plain, ours, ratio = c["plain_s"] * 1e3, c["lmforge_s"] * 1e3, c["ratio_of_medians"]
            print(f"{size:8} {clock:5} {plain:9.2f} {ours:11.2f} {ratio:7.3f}")
    print(f"wrote {args.out}")


def write_report(out: Path, results: dict, done: bool) -> None:
    report = {
        "what": "steady-state seconds per optimizer step: python train.py vs a plain PyTorch loop, same net, "
        "data, optimizer, schedule, clipping and precision (bench/overhead.py)",
        "complete": done,  # false: written after a round, the run went on (or was stopped) after it
        "machine": {"cpu_count": os.cpu_count(), "threads": _threads(), "load_average_at_end": os.getloadavg()},
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
