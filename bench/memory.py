"""Peak GPU memory per rank, DDP vs FSDP (full shard and shard-grad-op) vs TP vs PP, for GPT-2 training steps.

    torchrun --nproc-per-node=2 bench/memory.py                  # writes bench/results/memory.json (CUDA GPUs)
    torchrun --nproc-per-node=2 bench/memory.py --device cpu --tiny --out /tmp/memory.json   # CPU smoke run

Each rank builds the lmforge GPT net (GPT-2 small by default, `--size medium` for 355M; untied embeddings, which
pipeline stages need, for every layout alike) and lays it out over all ranks as `train.py` does:

  ddp                  the whole net on every rank (torch DDP)
  fsdp                 lmforge's FSDP2 sharding per block, resharded after forward (parallel/fsdp.py, meta init)
  fsdp_shard_grad_op   the same, parameters kept gathered between forward and backward
  tp                   the family's tensor-parallel plan over all ranks (parallel/tensor.py), vocabulary-parallel
                       head and loss, one replica reading every rank's batch
  pp                   pipeline stages over all ranks (parallel/pipeline.py: PipelineStrategy, GPipe,
                       --microbatches), one replica

and runs a few AdamW steps in bf16 autocast at sequence length 1024; it reports torch.cuda.max_memory_allocated
per rank. Every layout sees the same global batch (--batch per rank x world size): DDP and FSDP split it over
ranks, TP and PP give all of it to their one replica. Expect FSDP's weights + gradients + optimizer state (16 bytes
per parameter in fp32/AdamW) to shrink about by the world size, plus one gathered block and the activations,
which sharding does not touch; TP to shrink both (activations inside a block are split by heads); PP to hold
1/stages of the weights and state and, with GPipe, every micro-batch's activations of its own blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.models.gpt import GPT  # noqa: E402
from lmforge.objectives.losses import token_cross_entropy  # noqa: E402
from lmforge.parallel.fsdp import fully_shard_net  # noqa: E402
from lmforge.parallel.init import materialize  # noqa: E402
from lmforge.parallel.pipeline import PipelineStrategy  # noqa: E402
from lmforge.parallel.tensor import apply_tensor_parallel, loss_parallel_step  # noqa: E402
from lmforge.parallel.wrap import transformer_blocks  # noqa: E402

DATA_PARALLEL = ("ddp", "fsdp", "fsdp_shard_grad_op")  # each rank a replica reading its share of the batch
KINDS = (*DATA_PARALLEL, "tp", "pp")

SIZES = {
    "small": dict(vocab_size=50304, max_seq_len=1024, n_layer=12, n_head=12, d_model=768),
    "medium": dict(vocab_size=50304, max_seq_len=1024, n_layer=24, n_head=16, d_model=1024),
    "tiny": dict(vocab_size=512, max_seq_len=128, n_layer=2, n_head=2, d_model=64),
}
for _size in SIZES.values():
    _size["tie_word_embeddings"] = False


class _Stage:
    """What PipelineStrategy reads off a LightningModule (parallel/pipeline.py): the net and its optimizer; and the
    strategy that runs this rank's stage."""

    def __init__(self, net: torch.nn.Module, strategy: PipelineStrategy):
        self.net, self.strategy = net, strategy
        self.automatic_optimization = True
        self.optimizer: torch.optim.Optimizer | None = None

    def optimizers(self) -> torch.optim.Optimizer:
        assert self.optimizer is not None
        return self.optimizer

    def lr_schedulers(self) -> None:
        return None


def build(kind: str, size: dict, device: torch.device, args) -> tuple[torch.nn.Module, _Stage | None]:
    """(the module whose parameters the optimizer steps, this rank's pipeline stage for pp else None)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    with torch.device("meta"):
        net = GPT(**size)
    if kind == "ddp":
        materialize(net, device, seed=0)
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids), None
    if kind in ("fsdp", "fsdp_shard_grad_op"):
        mesh = init_device_mesh(device.type, (world,))
        fully_shard_net(net, transformer_blocks(net), mesh, reshard_after_forward=(kind == "fsdp"))
        materialize(net, device, seed=0)
        return net, None
    if kind == "tp":
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("tensor_parallel",))
        apply_tensor_parallel(net, transformer_blocks(net), mesh, sequence_parallel=False)
        materialize(net, device, seed=0)
        return net, None
    # pp: as train.py, the whole net drawn on the host, then each rank keeps its stage and moves it to the device
    materialize(net, torch.device("cpu"), seed=0)
    strategy = PipelineStrategy(pipeline_parallel_size=world, pipeline={"microbatches": args.microbatches})
    strategy.parallel_devices = [device]
    strategy._device_mesh = init_device_mesh(
        device.type, (1, world), mesh_dim_names=("data_parallel", "pipeline_parallel")
    )
    stage = _Stage(net, strategy)
    strategy.split_objective(stage)
    net.to(device)
    return net, stage


def _local_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (a DTensor's local shard only)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def train_steps(kind: str, model: torch.nn.Module, stage: _Stage | None, ids: torch.Tensor, args) -> int:
    """Run the steps; returns the bytes of parameters and optimizer state this rank holds (measurable on CPU)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if stage is not None:
        stage.optimizer = opt
    for _ in range(args.steps):
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            if stage is not None:  # the schedule runs forward and backward, micro-batch by micro-batch
                stage.strategy.forward_backward(stage, {"input_ids": ids, "labels": ids})
            else:
                with loss_parallel_step(kind == "tp"):  # vocabulary-parallel logits: the loss from their shards
                    logits = model(ids[:, :-1])
                    loss, _ = token_cross_entropy(logits, ids[:, 1:])
                    loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = [v for per_param in opt.state.values() for v in per_param.values() if torch.is_tensor(v) and v.dim()]
    return _local_bytes(model.parameters()) + _local_bytes(state)


def measure(kind: str, size: dict, args, device: torch.device) -> tuple[float | None, int]:
    """(peak device memory in GB, or None off CUDA; bytes of parameters + optimizer state held) of this rank."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, stage = build(kind, size, device, args)
    world = dist.get_world_size()
    rows = args.batch * (1 if kind in DATA_PARALLEL else world)  # the same global batch for every layout
    seq = size["max_seq_len"]
    gen = torch.Generator().manual_seed(dist.get_rank() if rows == args.batch else 0)  # a replica: the same ids
    ids = torch.randint(0, size["vocab_size"], (rows, seq + (0 if kind == "pp" else 1)), generator=gen).to(device)
    held = train_steps(kind, model, stage, ids, args)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    del model, stage
    return peak, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="small", choices=["small", "medium"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the code path, not a figure")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--microbatches", type=int, default=4, help="pp: micro-batches each batch is split into")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
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
    for kind in args.kinds:
        measured = measure(kind, size, args, device)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, measured)
        results[kind] = {
            "peak_memory_gb_per_rank": [peak for peak, _ in gathered],
            "params_and_optimizer_state_gb_per_rank": [held / 1e9 for _, held in gathered],
        }
    if dist.get_rank() == 0:
        report = {
            "model": "tiny" if args.tiny else f"gpt2-{args.size}",
            "world_size": dist.get_world_size(),
            "batch_per_rank": args.batch,
            "global_batch": args.batch * dist.get_world_size(),
            "pp_microbatches": args.microbatches,
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
