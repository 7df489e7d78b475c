"""The pieces a family's tensor-parallel plan is made of (`net.tp_plan()`, applied by lmforge.parallel.tensor).

A plan names modules and the DTensor ParallelStyle each gets, as torchtitan's: inside a block, column-parallel
linears take the replicated residual stream and keep their output sharded on the last dimension (this rank's
heads or MLP columns), row-parallel linears take that shard and sum the partial products back into the stream
(all-reduce; with sequence parallelism a reduce-scatter onto this rank's sequence positions).

Sequence parallelism: between the blocks' matmuls the residual stream is split along the sequence (dim 1), so the
norms and dropout each see 1/tp of the positions; it is gathered before each attention and MLP.

torch.distributed is imported only when a plan is built: the models stay importable without it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# Set while a training step runs loss-parallel (lmforge.parallel.fsdp.FSDP2Strategy): the vocabulary-parallel LM
# head then leaves its logits sharded by vocabulary, for torch's loss_parallel cross-entropy.
LOSS_PARALLEL: ContextVar[bool] = ContextVar("lmforge_loss_parallel", default=False)


def vocab_parallel_head(input_layout: Any) -> Any:
    """The LM head's style where the vocabulary is split: column-parallel, each rank computing the logits of its
    share of the vocabulary. Inside a loss-parallel step (LOSS_PARALLEL) they stay a DTensor sharded on the
    vocabulary, and torch's loss_parallel computes the cross-entropy from the shards (a max and a sum of exps
    all-reduced per position) without ever gathering (batch, time, vocab) logits; anywhere else (validation
    metrics, samples, generation) they are gathered, whole on every rank, as objectives read them."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel

    class VocabParallelHead(ColwiseParallel):
        loss_parallel = True  # what lmforge.parallel.tensor.apply_tensor_parallel reports to the strategy

        @staticmethod
        def _prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):
            if LOSS_PARALLEL.get():
                return outputs  # (b, t, vocab) as a DTensor, Shard(-1): this rank's vocabulary columns
            return ColwiseParallel._prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh)

    return VocabParallelHead(input_layouts=input_layout, output_layouts=Replicate())


@dataclass
class TPPlan:
    block: dict[str, Any] = field(default_factory=dict)  # module path inside one block -> ParallelStyle
    root: dict[str, Any] = field(default_factory=dict)  # module path inside the net -> ParallelStyle


class HeadShardedQKV:
    """A fused [q | k | v] projection (GPT-2's `attn.qkv`): its weight stays replicated and every rank computes
    the whole product, then keeps its own heads of each of q, k, v (heads split evenly across the ranks). Its
    backward all-gathers the heads' gradients, so the weight's gradient is whole and the same on every rank."""

    def __init__(self, n_head: int, head_dim: int):
        self.n_head, self.head_dim = n_head, head_dim

    def style(self):
        from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
        from torch.distributed.tensor.parallel.style import ParallelStyle

        n_head, head_dim = self.n_head, self.head_dim

        def partition(name, module, mesh):
            for pname, p in list(module.named_parameters(recurse=False)):
                module.register_parameter(pname, nn.Parameter(distribute_tensor(p, mesh, [Replicate()])))

        def inputs(module, args, mesh):
            x = args[0]
            if not isinstance(x, DTensor):
                x = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
            elif tuple(x.placements) != (Replicate(),):
                x = x.redistribute(mesh, [Replicate()])
            return (x, *args[1:])

        def outputs(module, out, mesh):
            b, t, _ = out.shape
            # (b, t, 3 * n_head * head_dim) -> (b, t, 3, n_head / tp, head_dim) on this rank -> (b, t, 3 * ...)
            local = out.view(b, t, 3, n_head, head_dim).redistribute(mesh, [Shard(3)]).to_local()
            return local.reshape(b, t, -1)

        class _Style(ParallelStyle):
            def _apply(self, module, device_mesh):
                return distribute_module(module, device_mesh, partition, inputs, outputs)

        return _Style()


def decoder_tp_plan(
    attention: dict[str, Any],
    mlp: dict[str, Any],
    norms: tuple[str, ...],
    final_norm: str,
    block_args: int,
    attn_args: int,
    vocab_parallel: bool,
    sequence_parallel: bool,
) -> TPPlan:
    """The plan of a pre-norm decoder. `attention`/`mlp`: module path in a block -> "col", "row" or a style
    (HeadShardedQKV). `block_args`/`attn_args`: how many positional arguments a block / its attention take (the
    residual stream first). `vocab_parallel`: shard the embedding's rows and the LM head's columns (untied only)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    sp = sequence_parallel
    stream = Shard(1) if sp else Replicate()  # the residual stream's layout between the sharded matmuls

    def style(kind: Any):
        if kind == "col":
            return ColwiseParallel()  # (b, t, d) replicated -> (b, t, out / tp) local
        if kind == "row":  # (b, t, in / tp) local -> (b, t, d): all-reduce, or reduce-scatter over t
            return RowwiseParallel(output_layouts=stream, use_local_output=not sp)
        return kind.style() if isinstance(kind, HeadShardedQKV) else kind

    block = {name: style(kind) for name, kind in {**attention, **mlp}.items()}
    root: dict[str, Any] = {}
    if vocab_parallel:
        # rows of the table split by vocabulary; each rank looks up its ids, the partial sums are all-reduced
        root["wte"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        # (b, t, d) -> (b, t, vocab / tp): loss-parallel in training, else gathered (b, t, vocab)
        root["lm_head"] = vocab_parallel_head(stream)
    elif sp:
        root["lm_head"] = PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
        )
    if sp:
        rest = (None,)
        for name in norms:
            block[name] = SequenceParallel()
        block["attn"] = PrepareModuleInput(
            input_layouts=(Shard(1), *rest * (attn_args - 1)),
            desired_input_layouts=(Replicate(), *rest * (attn_args - 1)),
        )
        block["mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        # the embeddings' output is whole on every rank: each keeps its positions
        root["blocks.0"] = PrepareModuleInput(
            input_layouts=(Replicate(), *rest * (block_args - 1)),
            desired_input_layouts=(Shard(1), *rest * (block_args - 1)),
        )
        root[final_norm] = SequenceParallel()
    return TPPlan(block=block, root=root)
