"""What `python train.py` costs per step beyond the model: lmforge against a plain PyTorch loop, side by side.

    python bench/overhead.py                                   # writes bench/results/overhead.json
    python bench/overhead.py --rounds 1 --steps 30 --sizes tiny --out /tmp/overhead.json    # smoke run

Both train the same net (lmforge's GPT, built from the same config) on the same token stream (lmforge's data
module: the corpus tokenized and packed the same way), with the same optimizer (AdamW, decay on matrices only),
schedule (linear warm-up then cosine), gradient clipping (1.0) and precision (32-true), one process, torch's
default threads. The plain loop is only that: a batch from the loader, forward, loss, backward, clip, step,
schedule. lmforge runs as a user runs it, with its default callbacks and loggers on (throughput/MFU, emissions
tracking, checkpoints on the step clock, samples, the progress bar, W&B offline and CSV).

Steady state: seconds per optimizer step after the first 5 steps, without validation, checkpoints and samples
(lmforge's own perf/step_time_s in summary.json, which leaves those out; the plain loop has none). Each round
runs both, in alternating order, as separate processes, so load on the machine hits them alike; the report gives
the median of each and the ratio of the medians, and every round's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5  # steps left out of the figure, as callbacks.throughput.warmup_steps

# The two sizes issue 18 names: a tiny GPT (0.8M parameters, character vocabulary), and the default model=gpt.
SIZES = {
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
STEPS = {"tiny": 600, "default": 150}
COMMON = ["model=gpt", "data=shakespeare", "trainer.precision=32-true"]


def plain_loop(overrides: list[str], steps: int) -> dict[str, float]:
    """The raw PyTorch loop, in this process: seconds per step after WARMUP steps."""
    sys.path.insert(0, str(REPO / "src"))
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
    times: list[float] = []
    batches = iter(())
    while len(times) < steps:
        started = time.perf_counter()
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
        times.append(time.perf_counter() - started)
    steady = times[WARMUP:]
    return {"step_time_s": sum(steady) / len(steady), "final_loss": float(loss)}


def lmforge_run(overrides: list[str], steps: int, folder: Path) -> dict[str, float]:
    """`python train.py` as a user types it; its summary.json's steady-state step time."""
    args = [
        *overrides,
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",  # one validation, at the end: not in the figure
        f"hydra.run.dir={folder}",
    ]
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    return {"step_time_s": summary["perf"]["step_time_s"], "final_loss": summary["metrics"].get("train/loss", 0.0)}


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
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overhead.json")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # one plain-loop run (internal)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        args.out.write_text(json.dumps(plain_loop(args.overrides, args.steps)))
        return

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            overrides, steps = [*COMMON, *SIZES[size]], args.steps or STEPS[size]
            rounds = []
            for r in range(args.rounds):
                order = ["plain", "lmforge"] if r % 2 == 0 else ["lmforge", "plain"]
                measured = {}
                for which in order:
                    if which == "plain":
                        measured[which] = run_plain_in_subprocess(overrides, steps)
                    else:
                        measured[which] = lmforge_run(overrides, steps, Path(tmp) / f"{size}-{r}")
                ratio = measured["lmforge"]["step_time_s"] / measured["plain"]["step_time_s"]
                rounds.append({**{k: v["step_time_s"] for k, v in measured.items()}, "ratio": ratio})
                print(
                    f"{size} round {r + 1}: plain {measured['plain']['step_time_s'] * 1e3:.2f} ms/step, lmforge "
                    f"{measured['lmforge']['step_time_s'] * 1e3:.2f} ms/step ({ratio:.3f}x)",
                    flush=True,
                )
            plain = statistics.median(r["plain"] for r in rounds)
            ours = statistics.median(r["lmforge"] for r in rounds)
            results[size] = {
                "overrides": overrides,
                "steps": steps,
                "plain_step_time_s": plain,
                "lmforge_step_time_s": ours,
                "ratio_of_medians": ours / plain,
                "overhead_ms_per_step": (ours - plain) * 1e3,
                "rounds": rounds,
            }
    report = {
        "what": "steady-state seconds per optimizer step: python train.py vs a plain PyTorch loop, same net, "
        "data, optimizer, schedule, clipping and precision (bench/overhead.py)",
        "machine": {"cpu_count": os.cpu_count(), "threads": _threads()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'size':8} {'plain ms':>9} {'lmforge ms':>11} {'ratio':>7}")
    for size, r in results.items():
        print(
            f"{size:8} {r['plain_step_time_s'] * 1e3:9.2f} {r['lmforge_step_time_s'] * 1e3:11.2f} "
            f"{r['ratio_of_medians']:7.3f}"
        )
    print(f"wrote {args.out}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
