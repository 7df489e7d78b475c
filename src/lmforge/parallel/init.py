"""Build the net, on the meta device when it will be sharded, and give it the same weights on any world size.

Every run draws the initial weights with `net.init_weights()` from a generator seeded with `seed`, so one process,
DDP and FSDP (which builds the net on the meta device and draws each parameter only after it is sharded) start
from identical weights. A net without `init_weights()` is built eagerly, as its constructor does.

The contract for a net: `init_weights()` sets every parameter and buffer (the meta-device build allocates them
uninitialised), drawing random values only through `torch.nn.init`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from torch import nn
from torch.overrides import TorchFunctionMode

from lmforge.protocols import Net


def wants_meta_init(cfg: DictConfig) -> bool:
    """True when trainer.strategy is lmforge's FSDP strategy with meta_init on (see conf/trainer/fsdp.yaml)."""
    from lmforge.parallel.fsdp import FSDP2Strategy

    strategy = cfg.trainer.get("strategy")
    if not isinstance(strategy, DictConfig) or "_target_" not in strategy:
        return False
    target = get_object(strategy._target_)
    return isinstance(target, type) and issubclass(target, FSDP2Strategy) and bool(strategy.get("meta_init", True))


def instantiate_objective(model_cfg: DictConfig, net: nn.Module | None = None, **objective_kwargs: Any):
    """cfg.model as an objective, with `net` (else cfg.model.net) and the objective's run-time arguments
    (scale_options, run_config) passed to its constructor as they are. They go through a partial: keyword arguments
    of Hydra's instantiate are merged into the config, which would turn a dataclass or a dict into a DictConfig
    (and the checkpoint's run config must stay a plain dict that torch.load(weights_only) reads)."""
    factory = instantiate(model_cfg, _partial_=True) if net is None else instantiate(model_cfg, net=net, _partial_=True)
    return factory(**objective_kwargs)


def build_model(cfg: DictConfig, seed: int, **objective_kwargs: Any):
    """Instantiate cfg.model. Its net is built on the meta device (no memory, no init) and materialised here with
    seeded weights, or, under FSDP with meta_init, later in configure_model once each rank holds only its shard.
    `objective_kwargs` go to the objective's constructor (lmforge.train: scale_options, run_config)."""
    net_cls = get_object(cfg.model.net._target_)
    if not isinstance(net_cls, type) or not callable(getattr(net_cls, "init_weights", None)):
        # e.g. a factory that loads pretrained weights: build as it says
        return instantiate_objective(cfg.model, **objective_kwargs)
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    model = instantiate_objective(cfg.model, net=net, **objective_kwargs)
    if not wants_meta_init(cfg):
        materialize(net, torch.device("cpu"), seed)
    return model


def is_meta(net: nn.Module) -> bool:
    return any(t.is_meta for t in (*net.parameters(), *net.buffers()))


def materialize(net: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate a meta-device net on `device` and draw its weights with `net.init_weights()` from `seed`.

    Sharded (DTensor) parameters get exactly the values a single process draws: see `_FullTensorInit`.
    """
    if not is_meta(net):
        return
    ties = _shared_parameters(net)
    net.to_empty(device=device)
    _retie(net, ties)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _FullTensorInit():
        torch.manual_seed(seed)
        cast(Net, net).init_weights()
    _zero_padding_rows(net)


def _shared_parameters(net: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Parameters used by several modules (tied embeddings), as (module, name) lists."""
    users: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), []).append((module, name))
    return [u for u in users.values() if len(u) > 1]


def _retie(net: nn.Module, ties: list[list[tuple[nn.Module, str]]]) -> None:
    """to_empty() from the meta device gives each module its own new Parameter, untying tied weights (a sharded
    net keeps them tied: FSDP swaps the tensors in place). Tie them again."""
    for (owner, owner_name), *others in ties:
        shared = getattr(owner, owner_name)
        for module, name in others:
            if getattr(module, name) is not shared:
                setattr(module, name, shared)


def _dtensor():
    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # a torch built without distributed
        return None, None
    return DTensor, distribute_tensor


class _FullTensorInit(TorchFunctionMode):
    """`torch.nn.init.*` on a sharded (DTensor) parameter: draw the full tensor on the CPU from the global generator,
    as one process would, and keep this rank's shard. Peak extra memory is one parameter, not the model.

    Why not DTensor's own random ops: on a CPU (gloo) mesh they draw the same numbers on every rank, so every shard
    of a weight is a copy of the first (measured with torch 2.13), and nowhere do they match a one-process init.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        DTensor, distribute_tensor = _dtensor()
        target = kwargs.get("tensor", args[0] if args else None)
        if DTensor is None or getattr(func, "__module__", None) != "torch.nn.init" or not isinstance(target, DTensor):
            return func(*args, **kwargs)
        full = torch.empty(target.shape, dtype=target.dtype, device="cpu")
        rest = {k: v for k, v in kwargs.items() if k != "tensor"}
        func(full, *args[1:], **rest)  # the same draws from the same generator as an unsharded init
        shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None).to_local()
        target.to_local().copy_(shard)
        return target


def _zero_padding_rows(net: nn.Module) -> None:
    """`weight[padding_idx].zero_()` in an init_weights() silently does nothing on a sharded weight (DTensor indexing
    returns a copy); redo it on this rank's rows, as nn.Embedding's own init does."""
    DTensor, distribute_tensor = _dtensor()
    if DTensor is None:
        return
    for m in net.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None and isinstance(w, DTensor):
            keep = torch.ones(w.shape[0], 1, dtype=w.dtype)
            keep[m.padding_idx] = 0
            local = distribute_tensor(keep, w.device_mesh, w.placements, src_data_rank=None).to_local()
            with torch.no_grad():
                w.to_local().mul_(local.to(w.to_local().device))
