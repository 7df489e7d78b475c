"""Pipeline parallelism: `trainer=pp` (`trainer.strategy.pipeline_parallel_size=N`), with torch.distributed.pipelining.

The net's transformer blocks are split into N consecutive stages, one per rank of the pipeline group: the first
stage also holds the embeddings, the last the final norm and LM head (the family's `pipeline_plan()`). A stage is the
net itself with the parts other stages own set to None, so parameter names do not change; the family's
`pipeline_forward(x)` runs whatever part a stage holds. Stages are balanced by parameter count (embeddings and
head included), or given by `trainer.strategy.pipeline.layers_per_stage`.

Every rank of a pipeline reads the same batch (one model replica: the data-parallel rank decides the shard). A
training step splits `data.batch_size` into `trainer.strategy.pipeline.microbatches` micro-batches and runs them
through torch's GPipe or 1F1B schedule (`schedule.step`), which runs forward and backward itself; so under this
strategy the objective optimises manually (LMObjective.training_step calls `forward_backward` and
`pipeline_optimizer_step` here). The loss of each micro-batch is its summed token cross-entropy divided by the
whole batch's target count (and the schedule does not rescale), so the gradient is exactly the one-process
gradient of the batch's mean loss. Gradient clipping uses the norm over all stages (squared norms summed over the
pipeline group). The last stage's loss is broadcast to every rank, so rank 0 logs it and summary.json has it.
Checkpoints are torch distributed checkpoint folders, one shard per stage, with the optimizer state flattened by
parameter name.

Validation runs each stage's forward with blocking send/recv of the hidden states (the shapes are known: every rank
has the batch), the last stage computes the loss and broadcasts it. Generation (samples) gathers the whole net on
every rank first (`full_weights`, as FSDP's), then decodes as one process.

Data parallel x pipeline parallel: world size / pipeline_parallel_size replicas of the pipeline (the mesh's
data_parallel dimension), each reading its shard of the batches as DDP's ranks do; after each step every stage's
gradients are averaged over its replicas (one all-reduce per parameter), as DDP would.

Gradient accumulation (global_batch_size > data.batch_size x replicas) adds each batch's gradients, weighted
1/accumulate, and steps where Lightning's fit loop would.

Not built: tensor parallel with it, tied embeddings (their weight would live in two stages: refused), objectives
other than the causal LM, document masks, meta-device init (each rank builds the full net, then drops the other
stages' parts).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import get_class, get_object
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmforge.errors import ConfigError
from lmforge.objectives.losses import IGNORE_INDEX

SCHEDULES = ("gpipe", "1f1b")


# ------------------------------------------------------------------ config checks (before any process group)


def _strategy_is_pipeline(strategy: Any) -> bool:
    if not isinstance(strategy, DictConfig) or "_target_" not in strategy:
        return False
    target = get_object(str(strategy._target_))
    return isinstance(target, type) and issubclass(target, PipelineStrategy)


def requested_pp(trainer_cfg: DictConfig) -> int:
    """pipeline_parallel_size that cfg.trainer asks for; 1 outside trainer=pp."""
    strategy = trainer_cfg.get("strategy")
    if not _strategy_is_pipeline(strategy):
        return 1
    pp = strategy.get("pipeline_parallel_size", 2)
    if isinstance(pp, bool) or not isinstance(pp, int) or pp < 1:
        raise ConfigError(f"trainer.strategy.pipeline_parallel_size={pp!r} must be a positive integer (1: no PP).")
    return pp


@dataclass(frozen=True)
class PipelineOptions:
    microbatches: int = 2
    schedule: str = "gpipe"
    layers_per_stage: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, values: Any) -> PipelineOptions:
        if isinstance(values, DictConfig):
            values = OmegaConf.to_container(values, resolve=True)
        values = dict(values or {})
        unknown = set(values) - {"microbatches", "schedule", "layers_per_stage"}
        if unknown:
            raise ConfigError(
                f"trainer.strategy.pipeline has no key {', '.join(sorted(unknown))}: its keys are microbatches, "
                "schedule, layers_per_stage."
            )
        mb = values.get("microbatches", cls.microbatches)
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
            raise ConfigError(f"trainer.strategy.pipeline.microbatches={mb!r} must be a positive integer.")
        schedule = str(values.get("schedule", cls.schedule)).lower()
        if schedule not in SCHEDULES:
            raise ConfigError(
                f"trainer.strategy.pipeline.schedule={values.get('schedule')!r}: choose one of {', '.join(SCHEDULES)}."
            )
        layers = values.get("layers_per_stage")
        if layers is not None:
            if not isinstance(layers, list | tuple) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers
            ):
                raise ConfigError(
                    f"trainer.strategy.pipeline.layers_per_stage={layers!r} must be a list of positive integers "
                    "(blocks per stage, first to last), or null to balance the stages by parameter count."
                )
            layers = tuple(layers)
        return cls(microbatches=mb, schedule=schedule, layers_per_stage=layers)


def _meta_net(net_cfg: DictConfig) -> nn.Module:
    """The configured net on the meta device (no memory): its structure, ties and block count, before any compute.
    The vocabulary size may still be unknown (filled from the tokenizer later): any size gives the same facts."""
    values = OmegaConf.to_container(net_cfg, resolve=True)
    assert isinstance(values, dict)
    kwargs = {str(k): v for k, v in values.items() if k != "_target_" and not OmegaConf.is_missing(net_cfg, k)}
    kwargs["vocab_size"] = kwargs.get("vocab_size") or 64
    with torch.device("meta"):
        return get_object(str(net_cfg._target_))(**kwargs)


def check_pipeline_parallel(cfg: DictConfig, world_size: int) -> int:
    """The data-parallel size once pipeline parallelism is known to fit the world size, the model and the objective.
    Runs before the Trainer exists, so a misfit stops the run before any process group computes."""
    if not _strategy_is_pipeline(cfg.trainer.get("strategy")):
        return world_size
    pp = requested_pp(cfg.trainer)
    options = PipelineOptions.parse(cfg.trainer.strategy.get("pipeline"))
    if world_size % pp:
        fits = ", ".join(str(n) for n in range(1, world_size + 1) if world_size % n == 0)
        raise ConfigError(
            f"trainer.strategy.pipeline_parallel_size={pp} does not divide the world size {world_size} "
            f"(trainer.devices x trainer.num_nodes): choose one of {fits}, or change the number of devices."
        )
    objective = get_class(str(cfg.model._target_))
    if getattr(objective, "name", None) != "clm":
        raise ConfigError(
            f"pipeline parallelism trains the causal LM objective only (model=gpt...), not {objective.__name__} "
            "(model._target_): use trainer=fsdp or trainer=ddp for it."
        )
    if cfg.data.get("document_mask", False):
        raise ConfigError(
            "data.document_mask=true is not supported with pipeline parallelism (its positions and masks are not "
            "sent between stages): set data.document_mask=false, or use trainer=fsdp."
        )
    if str(cfg.get("compile", False)).lower() == "model":
        raise ConfigError(
            "compile=model compiles the net's forward, which a pipeline stage does not run: use compile=blocks."
        )
    net_cls = get_object(str(cfg.model.net._target_))
    if not callable(getattr(net_cls, "pipeline_plan", None)) or not callable(
        getattr(net_cls, "pipeline_forward", None)
    ):
        raise ConfigError(
            f"pipeline parallelism has no stage split for {getattr(net_cls, '__name__', net_cls)} (model.net): the "
            "GPT and Llama families have one. Use trainer=fsdp or trainer=tp for this model."
        )
    net = _meta_net(cfg.model.net)
    plan = net.pipeline_plan()  # type: ignore[operator]
    n_blocks = len(getattr(net, plan.blocks))
    if pp > n_blocks:
        raise ConfigError(
            f"trainer.strategy.pipeline_parallel_size={pp} is more stages than the net's {n_blocks} blocks "
            f"(model.net.n_layer={n_blocks}): each stage needs at least one block. Use at most {n_blocks} stages, "
            "or more layers."
        )
    if _shared_between_stages(net, plan):
        raise ConfigError(
            "pipeline parallelism needs untied embeddings: the LM head (last stage) shares the token embedding's "
            "weight (first stage). Set model.net.tie_word_embeddings=false."
        )
    if options.layers_per_stage is not None and (
        len(options.layers_per_stage) != pp or sum(options.layers_per_stage) != n_blocks
    ):
        raise ConfigError(
            f"trainer.strategy.pipeline.layers_per_stage={list(options.layers_per_stage)} must give {pp} stages "
            f"(pipeline_parallel_size) whose blocks add up to model.net.n_layer={n_blocks}."
        )
    if options.schedule == "1f1b" and options.microbatches < pp:
        raise ConfigError(
            f"trainer.strategy.pipeline.schedule=1f1b needs at least as many micro-batches as stages: "
            f"trainer.strategy.pipeline.microbatches={options.microbatches} < pipeline_parallel_size={pp}. Raise "
            "microbatches, or use schedule=gpipe."
        )
    batch = int(cfg.data.batch_size)
    if batch % options.microbatches:
        raise ConfigError(
            f"trainer.strategy.pipeline.microbatches={options.microbatches} does not divide data.batch_size={batch}: "
            "each micro-batch takes an equal share of the batch. Choose a divisor of data.batch_size."
        )
    return world_size // pp


def _shared_between_stages(net: nn.Module, plan: Any) -> bool:
    first = {id(p) for name in plan.first for p in _params(getattr(net, name))}
    return any(id(p) in first for name in plan.last for p in _params(getattr(net, name)))


def _params(module: nn.Module | None) -> list[nn.Parameter]:
    return list(module.parameters()) if module is not None else []


# ------------------------------------------------------------------ the split


def stage_layers(net: nn.Module, stages: int, layers_per_stage: tuple[int, ...] | None = None) -> list[list[int]]:
    """The block indices of each stage, consecutive. Without `layers_per_stage`, the split whose largest stage has
    the fewest parameters (the first stage counts the embeddings, the last the final norm and head), every stage
    with at least one block."""
    plan = net.pipeline_plan()  # type: ignore[operator]
    n = len(getattr(net, plan.blocks))
    if layers_per_stage is None:
        counts = _balanced_counts(
            [sum(p.numel() for p in _params(b)) for b in getattr(net, plan.blocks)],
            sum(p.numel() for name in plan.first for p in _params(getattr(net, name))),
            sum(p.numel() for name in plan.last for p in _params(getattr(net, name))),
            stages,
        )
    else:
        counts = list(layers_per_stage)
    assert len(counts) == stages and sum(counts) == n, (counts, stages, n)
    out, start = [], 0
    for c in counts:
        out.append(list(range(start, start + c)))
        start += c
    return out


def _balanced_counts(weights: list[int], first: int, last: int, stages: int) -> list[int]:
    """Blocks per stage minimising the largest stage's weight (dynamic programme over split points)."""
    n = len(weights)
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[s][i]: the smallest largest-stage weight of the first i blocks in s + 1 stages; cut[s][i]: its last split
    best = [[inf] * (n + 1) for _ in range(stages)]
    cut = [[0] * (n + 1) for _ in range(stages)]
    for i in range(1, n + 1):
        best[0][i] = first + prefix[i] + (last if stages == 1 else 0)
    for s in range(1, stages):
        extra = last if s == stages - 1 else 0
        for i in range(s + 1, n + 1):
            for j in range(s, i):
                cost = max(best[s - 1][j], prefix[i] - prefix[j] + extra)
                if cost < best[s][i]:
                    best[s][i], cut[s][i] = cost, j
    counts, i = [], n
    for s in range(stages - 1, 0, -1):
        j = cut[s][i]
        counts.append(i - j)
        i = j
    counts.append(i)
    return counts[::-1]


@dataclass
class _Split:
    """What a split net's rank holds and where the rest lives (for full_weights)."""

    stage: int
    stages: int
    layers: list[list[int]]
    group: Any  # the pipeline group
    ranks: list[int]  # global rank of each stage
    # every part of the full net in a fixed order: (path, owning stage, meta-device copy when not held here)
    parts: list[tuple[str, int, nn.Module | None]] = field(default_factory=list)


_SPLITS: weakref.WeakKeyDictionary[nn.Module, _Split] = weakref.WeakKeyDictionary()


def split_net(net: nn.Module, stage: int, layers: list[list[int]], group: Any, ranks: list[int]) -> _Split:
    """Drop (set to None) the parts of `net` other stages own: their blocks, and the embeddings unless this is the
    first stage, the final norm and head unless it is the last. Their structure is kept on the meta device."""
    plan = net.pipeline_plan()  # type: ignore[operator]
    last = len(layers) - 1
    info = _Split(stage=stage, stages=len(layers), layers=layers, group=group, ranks=ranks)
    owner_of_block = {i: s for s, idx in enumerate(layers) for i in idx}
    blocks = getattr(net, plan.blocks)
    named = [(name, 0, lambda name=name: getattr(net, name)) for name in plan.first]
    named += [(f"{plan.blocks}.{i}", owner_of_block[i], lambda i=i: blocks[i]) for i in range(len(blocks))]
    named += [(name, last, lambda name=name: getattr(net, name)) for name in plan.last]
    for path, owner, get in named:
        module = get()
        if module is None:  # an optional part the net does not have (e.g. no position table)
            continue
        if owner == stage:
            info.parts.append((path, owner, None))
            continue
        info.parts.append((path, owner, module.to("meta")))
        _set(net, path, None)
    _SPLITS[net] = info
    return info


def _set(net: nn.Module, path: str, module: nn.Module | None) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)


def split_of(net: nn.Module) -> _Split | None:
    return _SPLITS.get(net)


@contextmanager
def full_weights(net: nn.Module) -> Iterator[None]:
    """Every rank holds the whole net for the duration (generation): each part is broadcast from the stage that
    owns it into a copy on the other ranks (a collective: all ranks enter together). Costs the memory of the whole
    weights for that time. The copies are dropped on exit; the stage's own parts are the live ones."""
    import torch.distributed as dist

    info = _SPLITS.get(net)
    if info is None:
        yield
        return
    device = next(net.parameters()).device
    borrowed = []
    with torch.no_grad():
        for path, owner, template in info.parts:
            module = net.get_submodule(path) if template is None else copy.deepcopy(template).to_empty(device=device)
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.detach(), src=info.ranks[owner], group=info.group)
            if template is not None:
                _set(net, path, module)
                borrowed.append(path)
    try:
        yield
    finally:
        for path in borrowed:
            _set(net, path, None)


# ------------------------------------------------------------------ the strategy


class _StageModule(nn.Module):
    """What torch's PipelineStage runs: the split net's `pipeline_forward`. Not registered on the LightningModule."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.pipeline_forward(x)  # type: ignore[operator]


class PipelineStrategy(ModelParallelStrategy):
    """Pipeline parallelism over all ranks (`trainer=pp`): Lightning's ModelParallelStrategy for the processes,
    the device mesh (data_parallel, pipeline_parallel) = (world / N, N), and torch's distributed checkpoints (one
    shard per stage); this class splits the net, runs the schedule and reduces across stages and replicas.

    pipeline_parallel_size  stages = ranks of one pipeline; the world size / it pipelines are data-parallel replicas
    pipeline.microbatches   micro-batches each batch (data.batch_size) is split into; must divide it
    pipeline.schedule       gpipe (all forwards, then all backwards) or 1f1b (one forward, one backward in turn)
    pipeline.layers_per_stage  blocks per stage, first to last; null: balanced by parameter count
    """

    def __init__(self, pipeline_parallel_size: int = 2, pipeline: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.pipeline_parallel_size = int(pipeline_parallel_size)  # validated by check_pipeline_parallel
        self.options = PipelineOptions.parse(pipeline)
        self.stage_split: _Split | None = None
        self.last_grad_norm: torch.Tensor | None = None
        self._schedule: Any = None
        self._stage_module: _StageModule | None = None
        self._denominator: torch.Tensor | None = None
        self._accumulating = False  # gradients of earlier batches of this optimizer step are held

    # -- processes and mesh --
    def setup_environment(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self._setup_distributed()  # the process group (ModelParallelStrategy's), then our own mesh
        pp = self.pipeline_parallel_size
        self._device_mesh = init_device_mesh(
            self.root_device.type, (self.world_size // pp, pp), mesh_dim_names=("data_parallel", "pipeline_parallel")
        )
        assert self.lightning_module is not None
        self.lightning_module._device_mesh = self._device_mesh

    # -- checkpoints: a folder with each stage's parameters and optimizer state by parameter name (DCP) --
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Each stage reads its own parameters and optimizer state from a trainer=pp checkpoint folder (torch
        distributed checkpoint, names of the whole net, the optimizer state flattened by name). Lightning's
        ModelParallelStrategy loads only nets with DTensor parameters, which a stage has not. FSDP's and TP's
        folders keep their optimizer state nested by group, which this does not read."""
        from pathlib import Path

        from lightning.fabric.strategies.fsdp import _distributed_checkpoint_load, _is_sharded_checkpoint
        from lightning.fabric.utilities.load import _METADATA_FILENAME
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            raise ConfigError(
                f"ckpt_path={path} is one file; trainer=pp resumes the checkpoint folder a trainer=pp run writes "
                "(<run>/checkpoints/last.ckpt). Resume a one-file checkpoint on one process or under trainer=ddp."
            )
        module = self.model
        assert module is not None and self.lightning_module is not None
        state = {"state_dict": get_model_state_dict(module)}
        _distributed_checkpoint_load(state, path)
        module.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        options = StateDictOptions(flatten_optimizer_state_dict=True, cpu_offload=True)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optim_state = {key: get_optimizer_state_dict(module, optimizer, options=options)}
            _distributed_checkpoint_load(optim_state, path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[key], options=options)
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The optimizer state flattened by parameter name, hyperparameters included ("param_groups.<name>.lr"):
        the stages' param_groups differ, and torch distributed checkpoint would keep one rank's copy of a nested
        `param_groups` list (as torchtitan, which flattens for the same reason)."""
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        assert self.model is not None
        options = StateDictOptions(flatten_optimizer_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, optimizer, options=options)

    @property
    def pp_group(self) -> Any:
        return self.device_mesh["pipeline_parallel"].get_group()

    @property
    def last_rank(self) -> int:
        assert self.stage_split is not None
        return self.stage_split.ranks[-1]

    @property
    def is_last_stage(self) -> bool:
        return self.stage_split is not None and self.stage_split.stage == self.stage_split.stages - 1

    # -- the split (LMObjective.configure_model, through lmforge.parallel.wrap) --
    def split_objective(self, objective: Any) -> list[nn.Module]:
        """Keep this rank's stage of `objective.net`; the objective optimises manually from now on (the schedule
        runs backward). Returns this stage's blocks."""
        import torch.distributed as dist

        from lmforge.parallel.wrap import transformer_blocks

        net = objective.net
        mesh = self.device_mesh["pipeline_parallel"]
        layers = stage_layers(net, self.pipeline_parallel_size, self.options.layers_per_stage)
        ranks = dist.get_process_group_ranks(mesh.get_group())
        self.stage_split = split_net(net, mesh.get_local_rank(), layers, mesh.get_group(), ranks)
        objective.automatic_optimization = False
        return transformer_blocks(net)

    def _build_schedule(self, net: nn.Module) -> Any:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        assert self.stage_split is not None
        self._stage_module = _StageModule(net)
        stage = PipelineStage(
            self._stage_module, self.stage_split.stage, self.stage_split.stages, self.root_device, group=self.pp_group
        )
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[self.options.schedule]
        return cls(stage, n_microbatches=self.options.microbatches, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One micro-batch's share of the batch's mean next-token loss: summed, over the whole batch's targets."""
        assert self._denominator is not None
        total = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total / self._denominator

    # -- training (LMObjective.training_step) --
    def forward_backward(self, objective: Any, batch: dict[str, torch.Tensor], accumulate: int = 1) -> torch.Tensor:
        """One batch through the pipeline, forward and backward: this stage's parameters' gradients (added to those
        of the step's earlier batches under gradient accumulation, each batch's weighted 1/accumulate as Lightning
        does), and the batch's mean loss on every rank (from the last stage; with replicas, their mean)."""
        import torch.distributed as dist

        assert self.stage_split is not None
        if self._schedule is None:
            self._schedule = self._build_schedule(objective.net)
        if not self._accumulating:  # the step's first batch
            objective.optimizers().zero_grad(set_to_none=True)
        self._accumulating = True
        ids, labels = batch["input_ids"], batch["labels"]
        self._denominator = (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1) * accumulate
        losses: list[torch.Tensor] = []
        args = (ids,) if self.stage_split.stage == 0 else ()
        if self.is_last_stage:
            self._schedule.step(*args, target=labels, losses=losses, return_outputs=False)
            loss = torch.stack([x.detach().float() for x in losses]).sum() * accumulate
        else:
            self._schedule.step(*args, return_outputs=False)
            loss = torch.zeros((), device=self.root_device)
        dist.broadcast(loss, src=self.last_rank, group=self.pp_group)
        if self.data_parallel_size > 1:  # the logged loss: the replicas' mean, the global batch's as one process's
            dist.all_reduce(loss, group=self.device_mesh["data_parallel"].get_group())
            loss = loss / self.data_parallel_size
        return loss

    @property
    def data_parallel_size(self) -> int:
        return int(self.device_mesh["data_parallel"].size())

    def after_batch(self, objective: Any) -> None:
        """Step the optimizer unless the batch's gradients accumulate into the next one's. Lightning's own rule
        (its fit loop's `_should_accumulate`, which also decides its step count and lr schedule): every
        trainer.accumulate_grad_batches batches, and at the end of an epoch."""
        if objective.trainer.fit_loop.epoch_loop._should_accumulate():
            return
        self.pipeline_optimizer_step(objective, objective.trainer.gradient_clip_val)

    def pipeline_optimizer_step(self, objective: Any, clip_val: float | None) -> None:
        """Average each stage's gradients over its data-parallel replicas, clip by the norm over all stages
        (trainer.gradient_clip_val), step the optimizer and the lr schedule."""
        import torch.distributed as dist

        params = [p for p in objective.net.parameters() if p.grad is not None]
        if self.data_parallel_size > 1:  # one all-reduce per parameter, once per step (as DDP's no_sync)
            dp_group = self.device_mesh["data_parallel"].get_group()
            for p in params:
                dist.all_reduce(p.grad, group=dp_group)
                p.grad.div_(self.data_parallel_size)
        self.last_grad_norm = total = self.grad_norm(params)
        if clip_val:
            coef = torch.clamp(float(clip_val) / (total + 1e-6), max=1.0)
            for p in params:
                p.grad.detach().mul_(coef.to(p.grad.device))
        objective.optimizers().step()
        scheduler = objective.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._accumulating = False

    def grad_norm(self, params: list[nn.Parameter]) -> torch.Tensor:
        """The L2 norm of the gradients of the whole net: this stage's squared norm summed over the pipeline."""
        import torch.distributed as dist

        sq = torch.zeros((), dtype=torch.float32, device=self.root_device)
        for g in (p.grad for p in params):
            if g is not None:
                sq += g.detach().float().pow(2).sum()
        dist.all_reduce(sq, group=self.pp_group)
        return sq.sqrt()

    # -- evaluation (LMObjective.eval_step) --
    def eval_loss(self, objective: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean next-token loss, number of targets) of a batch, on every rank: each stage's forward in turn,
        hidden states sent on with blocking send/recv (every rank has the batch, so it knows their shape)."""
        import torch.distributed as dist

        info = self.stage_split
        assert info is not None
        net, ids, labels = objective.net, batch["input_ids"], batch["labels"]
        if info.stage == 0:
            x = ids
        else:
            d_model = int(net.config.d_model)
            x = torch.empty(ids.shape[0], ids.shape[1], d_model, dtype=torch.float32, device=ids.device)
            dist.recv(x, src=info.ranks[info.stage - 1], group=info.group)
        out = net.pipeline_forward(x)
        if not self.is_last_stage:
            dist.send(out.float().contiguous(), dst=info.ranks[info.stage + 1], group=info.group)
            result = torch.zeros(2, device=ids.device)
        else:
            n = (labels[:, 1:] != IGNORE_INDEX).sum()
            total = F.cross_entropy(
                out[:, :-1].reshape(-1, out.size(-1)).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            result = torch.stack([total / n.clamp(min=1), n.float()]).to(torch.float32)
        dist.broadcast(result, src=self.last_rank, group=info.group)
        return result[0], result[1]

    def describe(self) -> dict[str, Any]:
        return {
            "schedule": self.options.schedule,
            "microbatches": self.options.microbatches,
            "layers_per_stage": list(self.options.layers_per_stage) if self.options.layers_per_stage else None,
        }


def share_step_progress(checkpoint: dict[str, Any]) -> None:
    """Lightning counts optimizer steps in its automatic or its manual optimisation loop, whichever ran, and resumes
    `global_step` from the one the resuming run uses. trainer=pp optimises manually, every other strategy
    automatically: copy the count into the loop that has none, so a checkpoint resumes at its step either way
    (a PP folder consolidated for one process, an FSDP folder resumed under trainer=pp)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    automatic = loop.get("epoch_loop.automatic_optimization.optim_progress")
    if not manual or not automatic:
        return
    step, zero_grad = automatic["optimizer"]["step"], automatic["optimizer"]["zero_grad"]
    if manual["total"]["completed"] and not step["total"]["completed"]:
        for scope in ("total", "current"):
            step[scope] = dict(manual[scope])
            zero_grad[scope] = {**manual[scope], "started": manual[scope]["completed"]}
    elif step["total"]["completed"] and not manual["total"]["completed"]:
        for scope in ("total", "current"):
            manual[scope] = {"ready": step[scope]["ready"], "completed": step[scope]["completed"]}


def pipeline_strategy(trainer: Any) -> PipelineStrategy | None:
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    return strategy if isinstance(strategy, PipelineStrategy) else None


def pipeline_parallel_size(trainer: Any) -> int:
    strategy = pipeline_strategy(trainer)
    return strategy.pipeline_parallel_size if strategy is not None else 1
