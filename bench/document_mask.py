"""What document masks (data.document_mask=true) cost: training tokens/s with and without, same run otherwise.

    python bench/document_mask.py                 # writes bench/results/document_mask.json (a few minutes on CPU)
    python bench/document_mask.py --rounds 1 --steps 2 --out /tmp/document_mask.json   # a quick check that it runs

For model=gpt and model=llama at their config sizes (conf/model/*.yaml), a training step is what lmforge runs: the
batch builder (objectives/clm.py; with the mask it also computes document ids and positions), the objective's loss
(the net's forward with the SDPA boolean mask built once per forward), backward and an AdamW step. The two variants
run in interleaved rounds (off/on, then on/off, ...) on the same blocks, so that a machine's load drifts into both
alike; each round times `--steps` steps after warm-up; the reported tokens/s is the median over rounds.

The blocks are random tokens with an eos every `--doc-len` tokens on average (geometric lengths): the dense mask's
cost does not depend on where the documents end (every score is computed either way; lmforge.models.masks).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.models.gpt import GPT  # noqa: E402
from lmforge.models.llama import Llama  # noqa: E402
from lmforge.objectives.clm import CausalLM, PackedCausalBatches  # noqa: E402

NETS = {"gpt": GPT, "llama": Llama}
VOCAB, EOS = 8192, 0


def net_config(model: str, seq_len: int) -> dict:
    net = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{model}.yaml").net)
    assert isinstance(net, dict)
    net.pop("_target_")
    return {**net, "vocab_size": VOCAB, "max_seq_len": max(seq_len, int(net["max_seq_len"]))}


def blocks(n: int, seq_len: int, doc_len: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, seq_len))
    ids[rng.random((n, seq_len)) < 1 / doc_len] = EOS
    return list(ids)


def time_steps(lm, opt, builder, data, steps, device, autocast) -> float:
    """Seconds for `steps` training steps (batch building included), after the device has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in builder(data[i % len(data)]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = lm.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(model: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = NETS[model](**net_config(model, args.seq_len)).to(device)
    lm = CausalLM(net=net, optimizer=None)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    plain = PackedCausalBatches(args.seq_len, eos_id=EOS)
    variants = {"without": plain, "with": plain.with_document_mask()}
    data = [blocks(args.batch_size, args.seq_len, args.doc_len, seed) for seed in range(args.steps)]
    autocast = device.type == "cuda"
    for builder in variants.values():  # warm-up: kernels chosen, allocator filled
        time_steps(lm, opt, builder, data, args.warmup, device, autocast)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            seconds[name].append(time_steps(lm, opt, variants[name], data, args.steps, device, autocast))
    tokens = args.steps * args.batch_size * args.seq_len
    tps = {name: [tokens / s for s in secs] for name, secs in seconds.items()}
    median = {name: statistics.median(v) for name, v in tps.items()}
    return {
        "model": model,
        "params": sum(p.numel() for p in net.parameters()),
        "tokens_per_sec_without": round(median["without"]),
        "tokens_per_sec_with": round(median["with"]),
        "with_over_without": round(median["with"] / median["without"], 3),
        "rounds_tokens_per_sec": {name: [round(x) for x in v] for name, v in tps.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt,llama")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--doc-len", type=int, default=64, help="mean document length in tokens")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "document_mask.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")
    rows = [bench(m.strip(), args, device) for m in args.models.split(",")]
    report = {
        "what": "training tokens/s with and without data.document_mask (median of interleaved rounds)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
        "settings": {k: getattr(args, k) for k in ("seq_len", "batch_size", "doc_len", "rounds", "steps", "warmup")},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['model']:6s} without {row['tokens_per_sec_without']:>9,} tok/s   "
            f"with {row['tokens_per_sec_with']:>9,} tok/s   ratio {row['with_over_without']:.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
