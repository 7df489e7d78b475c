"""What `LMObjective.configure_model` applies, for every strategy, once per run:

  tensor (+ sequence) parallelism by the family's plan  (`trainer.strategy.tensor_parallel_size=N`)
  activation checkpointing per transformer block  (`activation_checkpointing=true`)
  torch.compile per block or of the whole net     (`compile=true|blocks|model`)
  FSDP2 sharding per block, then the root         (`trainer=fsdp`)
  materialising a net built on the meta device    (FSDP with meta_init)

in that order, as torchtitan does. Parameter names never change (no wrapper modules), so checkpoints load
whichever of these a run used.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.errors import ConfigError

COMPILE_CHOICES = {
    False: None,
    "false": None,
    None: None,
    True: "blocks",
    "true": "blocks",
    "blocks": "blocks",
    "model": "model",
}


@dataclass(frozen=True)
class ScaleOptions:
    compile: str | None = None  # None, "blocks" or "model"
    activation_checkpointing: bool = False
    init_seed: int = 0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ScaleOptions:
        compile_value = cfg.get("compile", False)
        if isinstance(compile_value, str):
            compile_value = compile_value.lower()
        if compile_value not in COMPILE_CHOICES:
            raise ConfigError(
                f"compile={compile_value!r}: choose false, true (= blocks: each transformer block), "
                "blocks, or model (the whole net)."
            )
        ac = cfg.get("activation_checkpointing", False)
        if not isinstance(ac, bool):
            raise ConfigError(f"activation_checkpointing={ac!r} must be true or false.")
        return cls(compile=COMPILE_CHOICES[compile_value], activation_checkpointing=ac, init_seed=int(cfg.seed))


def transformer_blocks(net: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a net, from `net.transformer_blocks()` (the `Net` contract, lmforge/protocols.py)."""
    if callable(blocks := getattr(net, "transformer_blocks", None)):
        return list(blocks())
    raise ConfigError(
        f"{type(net).__name__} exposes no transformer blocks, which FSDP, compile=blocks and "
        "activation_checkpointing work on: give it a transformer_blocks() method."
    )


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if not torch.is_grad_enabled():  # evaluation and generation: nothing to recompute
        return forward(self, *args, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: list[nn.Module]) -> None:
    """Recompute each block's activations in backward instead of keeping them. Done by replacing the instance's
    forward rather than with torch's checkpoint_wrapper, which renames every parameter of the block
    (`_checkpoint_wrapped_module.`) and so would make checkpoints depend on this option."""
    for block in blocks:
        block.forward = types.MethodType(_checkpointed_forward, block)


def compile_net(net: nn.Module, blocks: list[nn.Module], mode: str | None) -> None:
    """In place (nn.Module.compile), so parameter names stay free of `_orig_mod.`."""
    if mode == "blocks":
        for block in blocks:
            block.compile()
    elif mode == "model":
        net.compile()


def is_sharded(module: nn.Module) -> bool:
    """FSDP-sharded, or a pipeline stage (lmforge.parallel.pipeline): every rank must join to gather the weights."""
    from lmforge.parallel.pipeline import split_of

    if any(split_of(m) is not None for m in module.modules()):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in module.modules())


def configure_model(objective) -> None:
    """Apply the options to `objective.net` for the strategy in use. Lightning calls configure_model for fit and
    again for validate in the same process: the second call does nothing."""
    from lmforge.parallel.fsdp import FSDP2Strategy
    from lmforge.parallel.init import materialize
    from lmforge.parallel.pipeline import PipelineStrategy

    if objective.configured_for_scale:
        return
    options = objective.scale_options
    net, strategy = objective.net, objective.trainer.strategy
    sharded = isinstance(strategy, FSDP2Strategy)
    blocks = transformer_blocks(net) if (sharded or options.activation_checkpointing or options.compile) else []
    if isinstance(strategy, PipelineStrategy):
        blocks = strategy.split_objective(objective)  # this rank's pipeline stage: its blocks (+ embeddings / head)
    if sharded:
        strategy.parallelize(net, blocks)  # tensor parallelism first (trainer.strategy.tensor_parallel_size)
    if options.activation_checkpointing:
        checkpoint_blocks(blocks)
    compile_net(net, blocks, options.compile)
    if sharded:
        strategy.shard(net, blocks, objective.trainer.precision)
    materialize(net, strategy.root_device, options.init_seed)  # only a net still on the meta device
    objective.configured_for_scale = True


def vocab_parallel_head(net: nn.Module) -> bool:
    """Whether the net's tensor-parallel plan splits the LM head by vocabulary (models/tp_plan.py)."""
    from lmforge.parallel.tensor import splits_vocabulary

    plan = getattr(net, "tp_plan", None)
    return callable(plan) and splits_vocabulary(plan(False))


def describe_strategy(trainer, options: ScaleOptions | None, net: nn.Module | None = None) -> dict:
    """The "scale" facts of summary.json beside the batch ones (lmforge.budget)."""
    from lmforge.parallel.fsdp import FSDP2Strategy
    from lmforge.parallel.pipeline import PipelineStrategy

    strategy = trainer.strategy
    # "fsdp" (trainer=fsdp), "pipeline" (trainer=pp), else Lightning's class name in snake case: "ddp", ...
    name = (
        "fsdp"
        if isinstance(strategy, FSDP2Strategy)
        else re.sub(r"(?<=[a-z])(?=[A-Z])", "_", type(strategy).__name__.removesuffix("Strategy")).lower()
    )
    options = options or ScaleOptions()
    facts = {
        "strategy": name,
        "num_nodes": int(trainer.num_nodes),
        "precision": str(trainer.precision),
        "compile": options.compile or False,
        "activation_checkpointing": options.activation_checkpointing,
    }
    if isinstance(strategy, FSDP2Strategy):
        facts["fsdp"] = {
            "reshard_after_forward": strategy.reshard_after_forward,
            "mixed_precision": strategy.mixed_precision,
            "cpu_offload": strategy.cpu_offload,
            "meta_init": strategy.meta_init,
        }
        # the device mesh: data-parallel replicas x tensor-parallel ranks per replica
        tp = strategy.tensor_parallel_size
        facts["mesh"] = {
            "dp": int(trainer.world_size) // tp,
            "tp": tp,
            "pp": 1,
            "sequence_parallel": strategy.sequence_parallel,
            # the training loss from the LM head's vocabulary shards (untied embeddings only; parallel/tensor.py)
            "loss_parallel": tp > 1 and strategy.loss_parallel and net is not None and vocab_parallel_head(net),
        }
    if isinstance(strategy, PipelineStrategy):
        # the device mesh: data-parallel replicas x pipeline stages per replica (no tensor parallelism with it)
        pp = strategy.pipeline_parallel_size
        facts["mesh"] = {"dp": int(trainer.world_size) // pp, "tp": 1, "pp": pp}
        pipeline = strategy.describe()
        if net is not None:  # which blocks each stage holds (embeddings in the first, head in the last)
            from lmforge.parallel.pipeline import stage_layers

            layers = stage_layers(net, pp, strategy.options.layers_per_stage)
            pipeline["stages"] = [{"blocks": idx} for idx in layers]
        facts["pipeline"] = pipeline
    return facts
