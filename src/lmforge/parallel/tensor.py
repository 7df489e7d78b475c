"""Tensor (+ sequence) parallelism: each transformer block's matmuls split across the `tensor_parallel` dimension of
the FSDP strategy's (data_parallel, tensor_parallel) device mesh, by the plan the net's family gives (`tp_plan()`
on the net: lmforge/models/tp_plan.py). Applied before FSDP2 shards the result over `data_parallel` (2-D).

The ranks of one tensor-parallel group compute one model replica on one batch: the data-parallel rank decides the
data shard (Lightning's ModelParallelStrategy.distributed_sampler_kwargs), and the token and throughput counts
count each group once (`data_parallel_size`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmforge.errors import ConfigError


def requested_tp(trainer_cfg: DictConfig) -> tuple[int, bool]:
    """(tensor_parallel_size, sequence_parallel) that cfg.trainer asks for; (1, False) outside trainer=fsdp/tp."""
    strategy = trainer_cfg.get("strategy")
    if not isinstance(strategy, DictConfig) or "_target_" not in strategy:
        return 1, False
    tp, sp = strategy.get("tensor_parallel_size", 1), strategy.get("sequence_parallel", False)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"trainer.strategy.tensor_parallel_size={tp!r} must be a positive integer (1: no TP).")
    if not isinstance(sp, bool):
        raise ConfigError(f"trainer.strategy.sequence_parallel={sp!r} must be true or false.")
    return tp, sp


def check_tensor_parallel(cfg: DictConfig, world_size: int) -> int:
    """The data-parallel size, once tensor parallelism is known to fit: the world size, the model family and its
    head counts. Runs before the Trainer exists, so a misfit stops the run before any process group computes."""
    tp, sp = requested_tp(cfg.trainer)
    if tp == 1:
        if sp:
            raise ConfigError(
                "trainer.strategy.sequence_parallel=true needs tensor parallelism: set "
                "trainer.strategy.tensor_parallel_size to 2 or more, or sequence_parallel=false."
            )
        return world_size
    if world_size % tp:
        fits = ", ".join(str(n) for n in range(1, world_size + 1) if world_size % n == 0)
        raise ConfigError(
            f"trainer.strategy.tensor_parallel_size={tp} does not divide the world size {world_size} "
            f"(trainer.devices x trainer.num_nodes): choose one of {fits}, or change the number of devices."
        )
    net_cfg = cfg.model.net
    net_cls = get_object(net_cfg._target_)
    if not callable(getattr(net_cls, "tp_plan", None)) or not callable(getattr(net_cls, "tp_sharded_sizes", None)):
        raise ConfigError(
            f"tensor parallelism has no plan for {getattr(net_cls, '__name__', net_cls)} (model.net): the GPT and "
            "Llama families have one; BERT and T5 do not (their attention and relative-bias layouts are not split "
            "by lmforge). Use trainer.strategy.tensor_parallel_size=1 (FSDP/DDP) for this model."
        )
    values = OmegaConf.to_container(net_cfg, resolve=True)
    assert isinstance(values, dict)
    kwargs = {
        k: v for k, v in values.items() if k not in ("_target_", "vocab_size") and not OmegaConf.is_missing(net_cfg, k)
    }
    for key, size in net_cls.tp_sharded_sizes(**{str(k): v for k, v in kwargs.items()}).items():
        if size % tp:
            raise ConfigError(
                f"trainer.strategy.tensor_parallel_size={tp} does not divide {key}={size}: each rank takes an "
                f"equal share. Choose a tensor_parallel_size that divides it, or change {key}."
            )
    return world_size // tp


def apply_tensor_parallel(net: nn.Module, blocks: list[nn.Module], mesh: Any, sequence_parallel: bool) -> bool:
    """Parallelize `net` in place over the 1-D tensor-parallel `mesh`: every block by the plan's block part, then
    the net's own modules (embedding, final norm, LM head). Parameter names do not change. Returns whether the LM
    head is vocabulary-parallel, so that training can compute its loss from the vocabulary shards
    (models/tp_plan.py: vocab_parallel_head)."""
    from torch.distributed.tensor.parallel import parallelize_module

    plan = net.tp_plan(sequence_parallel)  # type: ignore[operator]
    for block in blocks:
        parallelize_module(block, mesh, plan.block)
    if plan.root:
        parallelize_module(net, mesh, plan.root)
    return splits_vocabulary(plan)


def splits_vocabulary(plan: Any) -> bool:
    """Whether a TPPlan gives the LM head the vocabulary-parallel style (models/tp_plan.py: vocab_parallel_head)."""
    return bool(getattr(plan.root.get("lm_head"), "loss_parallel", False))


@contextmanager
def loss_parallel_step(on: bool) -> Iterator[None]:
    """A training step's forward or backward with the LM head's logits sharded by vocabulary and the cross-entropy
    computed from the shards (torch's loss_parallel, which must cover the backward too); nothing when `on` is
    false."""
    if not on:
        yield
        return
    from torch.distributed.tensor.parallel import loss_parallel

    from lmforge.models.tp_plan import LOSS_PARALLEL

    token = LOSS_PARALLEL.set(True)
    try:
        with loss_parallel():
            yield
    finally:
        LOSS_PARALLEL.reset(token)


def tensor_parallel_size(trainer: Any) -> int:
    """1 unless the trainer's strategy is the FSDP strategy with tensor parallelism."""
    return int(getattr(trainer.strategy, "tensor_parallel_size", 1) or 1)


def model_parallel_size(trainer: Any) -> int:
    """Ranks that compute one model replica together on one batch: tensor-parallel x pipeline-parallel size."""
    from lmforge.parallel.pipeline import pipeline_parallel_size

    return tensor_parallel_size(trainer) * pipeline_parallel_size(trainer)


def data_parallel_size(trainer: Any) -> int:
    """The number of model replicas that see different batches: world size / (tensor- x pipeline-parallel size)."""
    return int(trainer.world_size) // model_parallel_size(trainer)


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all `grads` as a plain tensor, whatever meshes their DTensors live on (one per
    (mesh, placements) group reduced first: torch's get_total_norm cannot stack DTensors of different meshes)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return torch.nn.utils.get_total_norm(grads)
    groups: dict[Any, list[torch.Tensor]] = {}
    for g in grads:
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
        groups.setdefault(key, []).append(g)
    if len(groups) <= 1:  # one process, DDP, FSDP alone: torch's own, on the device
        norm = torch.nn.utils.get_total_norm(grads)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm
    total_sq = torch.zeros((), dtype=torch.float64)
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        total_sq += norm.double().cpu() ** 2
    return total_sq.sqrt().float()


def clip_grad_norm_across_meshes(parameters: Any, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for a net whose parameters live on different device meshes: under TP + FSDP2
    the sharded matmuls' weights are DTensors on the 2-D mesh, the rest (norms, replicated embeddings) on the
    data-parallel dimension only, and torch's version refuses to stack norms of DTensors of different meshes.
    Each (mesh, placements) group's norm is reduced to a plain number first; the gradients are then scaled
    in place by the one coefficient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = grad_norm(grads)
    coef = min(1.0, float(max_norm) / (float(total) + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total
