"""Training tokens/s of bf16-mixed vs 32-true (and bf16-true) on this machine's CPU: the measurement behind the
CPU precision default (lmforge/resolvers.py picks bf16-mixed where the CPU has AVX512-BF16 or AMX).

    python bench/precision.py                 # writes bench/results/precision.json
    python bench/precision.py --rounds 1 --steps 3 --out /tmp/precision.json    # smoke run

A plain loop (the default `model=gpt` net, AdamW, seq 128, batch 16) without Lightning, one thread per core.
Precisions are interleaved round by round so that changing machine load hits each alike; the report gives the
median tokens/s of each and the ratios to 32-true measured in this one run. The same is measured over widths
(`sizes`: 4-layer GPTs of d_model 32 to 512): below some width bf16's casts cost more than its faster matmuls
save. Where that crossover lies differs between CPUs, which is why the CPU default measures it on the machine
itself (lmforge/cpu_precision.py) rather than following a width fixed here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.models.gpt import GPT  # noqa: E402
from lmforge.resolvers import cpu_has_bf16, default_precision  # noqa: E402

GPT_DEFAULT = dict(vocab_size=8192, max_seq_len=256, n_layer=4, n_head=4, d_model=256)  # conf/model/gpt.yaml


WIDTHS = (32, 64, 128, 192, 256, 384, 512)


def tokens_per_sec(precision: str, steps: int, batch: int, seq: int, d_model: int = 256) -> float:
    torch.manual_seed(0)
    net = GPT(**{**GPT_DEFAULT, "d_model": d_model})
    if precision == "bf16-true":
        net = net.to(torch.bfloat16)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ids = torch.randint(0, GPT_DEFAULT["vocab_size"], (batch, seq + 1))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()

    def step() -> None:
        with autocast:
            logits = net(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--widths", type=int, nargs="*", default=list(WIDTHS), help="d_model values to compare")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "precision.json")
    args = parser.parse_args()
    precisions = ("32-true", "bf16-mixed", "bf16-true")
    samples: dict[str, list[float]] = {p: [] for p in precisions}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for p in precisions:
            samples[p].append(tokens_per_sec(p, args.steps, args.batch, args.seq_len))
    median = {p: statistics.median(v) for p, v in samples.items()}
    by_width: dict[int, dict[str, list[float]]] = {d: {p: [] for p in precisions[:2]} for d in args.widths}
    for _ in range(args.rounds):
        for d in args.widths:
            for p in precisions[:2]:
                by_width[d][p].append(tokens_per_sec(p, args.steps, args.batch, args.seq_len, d_model=d))
    sizes = {}
    for d, runs in by_width.items():
        fp32, bf16 = statistics.median(runs["32-true"]), statistics.median(runs["bf16-mixed"])
        sizes[str(d)] = {
            "tokens_per_sec_32_true": fp32,
            "tokens_per_sec_bf16_mixed": bf16,
            "bf16_mixed_ratio": bf16 / fp32,
        }
        print(f"d_model {d:4}: 32-true {fp32:9,.0f} tok/s, bf16-mixed {bf16:9,.0f} ({bf16 / fp32:.2f}x)", flush=True)
    faster = [d for d in args.widths if sizes[str(d)]["bf16_mixed_ratio"] > 1.0]
    # the narrowest width from which on bf16-mixed is faster at every measured width
    crossover = next((d for d in args.widths if all(w in faster for w in args.widths if w >= d)), None)
    report = {
        "what": "CPU training tokens/s by precision, median of interleaved rounds; ratios are to 32-true",
        "cpu_has_bf16": cpu_has_bf16(),
        "default_precision": default_precision(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "config": {
            "model": "gpt (4 layers, d 256)",
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "rounds": args.rounds,
        },
        "tokens_per_sec": median,
        "samples": samples,
        "ratio_to_32_true": {p: median[p] / median["32-true"] for p in precisions},
        "sizes": {
            "what": "4-layer GPT, n_head 4, vocab 8192, by d_model: median tokens/s of interleaved rounds",
            "by_d_model": sizes,
            "bf16_mixed_faster_from_d_model": crossover,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_to_32_true"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
