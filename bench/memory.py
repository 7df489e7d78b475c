"""Peak GPU memory per rank, DDP vs FSDP (full shard and shard-grad-op), for GPT-2 training steps.

    torchrun --nproc-per-node=2 bench/memory.py                  # writes bench/results/memory.json (CUDA GPUs)
    torchrun --nproc-per-node=2 bench/memory.py --device cpu --tiny --out /tmp/memory.json   # CPU smoke run

Each rank builds the lmforge GPT net (GPT-2 small by default, `--size medium` for 355M), wraps it as DDP or with
lmforge's FSDP2 sharding per block (parallel/fsdp.py, meta-device build as in `trainer=fsdp`), and runs a few
AdamW steps in bf16 autocast at sequence length 1024; it reports torch.cuda.max_memory_allocated per rank. Expect
FSDP's weights + gradients + optimizer state (16 bytes per parameter in fp32/AdamW) to shrink about by the world
size, plus one gathered block and the activations, which sharding does not touch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.models.gpt import GPT  # noqa: E402
from lmforge.parallel.fsdp import fully_shard_net  # noqa: E402
from lmforge.parallel.init import materialize  # noqa: E402
from lmforge.parallel.wrap import transformer_blocks  # noqa: E402

SIZES = {
    "small": dict(vocab_size=50304, max_seq_len=1024, n_layer=12, n_head=12, d_model=768),
    "medium": dict(vocab_size=50304, max_seq_len=1024, n_layer=24, n_head=16, d_model=1024),
    "tiny": dict(vocab_size=512, max_seq_len=128, n_layer=2, n_head=2, d_model=64),
}


def build(kind: str, size: dict, device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    with torch.device("meta"):
        net = GPT(**size)
    if kind == "ddp":
        materialize(net, device, seed=0)
        return torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    fully_shard_net(net, transformer_blocks(net), mesh, reshard_after_forward=(kind == "fsdp"))
    materialize(net, device, seed=0)
    return net


def peak_per_rank(kind: str, size: dict, args, device: torch.device) -> float | None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build(kind, size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seq = size["max_seq_len"]
    ids = torch.randint(0, size["vocab_size"], (args.batch, seq + 1), device=device)
    for _ in range(args.steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    del model, opt
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="small", choices=["small", "medium"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the code path, not a figure")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    size = SIZES["tiny" if args.tiny else args.size]
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here (--device cpu --tiny checks the code path)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(args.device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    results = {}
    for kind in ("ddp", "fsdp", "fsdp_shard_grad_op"):
        peak = peak_per_rank(kind, size, args, device)
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, peak)
        results[kind] = {"peak_memory_gb_per_rank": gathered}
    if dist.get_rank() == 0:
        report = {
            "model": "tiny" if args.tiny else f"gpt2-{args.size}",
            "world_size": dist.get_world_size(),
            "batch_per_rank": args.batch,
            "seq_len": size["max_seq_len"],
            "precision": "bf16 autocast",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
