"""`trainer=fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's ModelParallelStrategy.

Why not Lightning's FSDPStrategy: it wraps FSDP1, which PyTorch is retiring, and refuses a CPU ("requires a GPU
accelerator"), so it could not be tested here. ModelParallelStrategy leaves the sharding to the LightningModule's
`configure_model`; lmforge applies it there per transformer block (lmforge.parallel.wrap), so the same code runs
over gloo on CPU and NCCL on GPUs.
"""

from __future__ import annotations

import types
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from lmforge.errors import ConfigError

MIXED_PRECISION = ("auto", "bf16", "none")

# full_weights() state, kept beside the modules rather than as attributes on them: each FSDP unit's own
# reshard_after_forward (restored when full_weights ends), and the units a full_weights() now holds gathered.
_RESHARD_AFTER_FORWARD: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
_GATHERED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel over the (data_parallel, tensor_parallel) device mesh's first dimension, and
    tensor parallelism over its second (lmforge.parallel.tensor; 1 by default: FSDP over every rank).

    reshard_after_forward  true: free each block's gathered weights after its forward and gather again for backward
                           (FULL_SHARD / ZeRO-3, least memory); false: keep them until backward (SHARD_GRAD_OP /
                           ZeRO-2, one all-gather fewer per block, more memory)
    mixed_precision        auto: with trainer.precision=bf16-mixed, gather weights and compute in bf16 and reduce
                           gradients in fp32 (FSDP's MixedPrecisionPolicy); bf16: always; none: never
    cpu_offload            keep sharded weights, gradients and optimizer state in host memory (GPU only)
    meta_init              build the net on the meta device and draw each rank's shard only (see parallel/init.py),
                           so a model larger than one device's memory can be built
    save_distributed_checkpoint  true: a checkpoint is a folder with one shard per rank (torch distributed
                           checkpoint; resumable on another world size); false: one consolidated file from rank 0
    tensor_parallel_size   ranks that split each block's matmuls (column/row-parallel, the family's tp_plan);
                           must divide the world size and the head counts (checked before the run starts)
    sequence_parallel      with tensor parallelism: norms and dropout each see 1/tp of the sequence positions
    loss_parallel          with tensor parallelism and a vocabulary-parallel LM head (untied embeddings): training
                           computes the cross-entropy from each rank's vocabulary shard of the logits, never
                           gathering the (batch, time, vocab) logits; false: gather them, ordinary cross-entropy
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        mixed_precision: str = "auto",
        cpu_offload: bool = False,
        meta_init: bool = True,
        save_distributed_checkpoint: bool = True,
        tensor_parallel_size: int = 1,
        sequence_parallel: bool = False,
        loss_parallel: bool = True,
        **kwargs: Any,
    ):
        if mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"trainer.strategy.mixed_precision={mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}."
            )
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.mixed_precision = mixed_precision
        self.cpu_offload = bool(cpu_offload)
        self.meta_init = bool(meta_init)
        self.tensor_parallel_size = int(tensor_parallel_size)  # validated by parallel/tensor.check_tensor_parallel
        self.sequence_parallel = bool(sequence_parallel)
        self.loss_parallel = bool(loss_parallel)
        self.loss_parallel_on = False  # set when the net is parallelized: the setting, where the plan allows it

    def setup_environment(self) -> None:
        # Shard over all ranks of all nodes; ModelParallelStrategy's "auto" would shard within a node only.
        # Tensor-parallel groups are consecutive ranks (the mesh's last dimension): within a node where they fit.
        self._data_parallel_size = self.num_nodes * self.num_processes // self.tensor_parallel_size
        self._tensor_parallel_size = self.tensor_parallel_size
        super().setup_environment()

    def mp_policy(self, precision: str):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        bf16 = self.mixed_precision == "bf16" or (self.mixed_precision == "auto" and precision == "bf16-mixed")
        if not bf16:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

    def offload_policy(self):
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        if not self.cpu_offload:
            return OffloadPolicy()
        if self.root_device.type == "cpu":
            rank_zero_warn("trainer.strategy.cpu_offload=true has no effect on a CPU: the weights are in host memory.")
            return OffloadPolicy()
        return CPUOffloadPolicy()

    def parallelize(self, net: nn.Module, blocks: list[nn.Module]) -> None:
        """Tensor parallelism, before anything else wraps the blocks (as torchtitan: TP, then AC/compile, FSDP)."""
        if self.tensor_parallel_size > 1:
            from lmforge.parallel.tensor import apply_tensor_parallel, clip_grad_norm_across_meshes

            vocab_parallel = apply_tensor_parallel(
                net, blocks, self.device_mesh["tensor_parallel"], self.sequence_parallel
            )
            self.loss_parallel_on = self.loss_parallel and vocab_parallel
            # trainer.gradient_clip_val: torch's clip_grad_norm_ cannot combine the 2-D (TP) and 1-D (FSDP-only)
            # DTensors; Lightning's precision plugin calls this method, so this instance's is replaced.
            plugin = self.precision_plugin
            plugin.clip_grad_by_norm = types.MethodType(  # type: ignore[method-assign]
                lambda p, optimizer, clip_val: clip_grad_norm_across_meshes(p.main_params(optimizer), clip_val),
                plugin,
            )

    # Loss-parallel covers the step's forward (the objective's loss) and its backward; validation, samples and
    # generation read whole logits and run outside it.
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        from lmforge.parallel.tensor import loss_parallel_step

        with loss_parallel_step(self.loss_parallel_on):
            return super().training_step(*args, **kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        from lmforge.parallel.tensor import loss_parallel_step

        with loss_parallel_step(self.loss_parallel_on):
            return super().backward(*args, **kwargs)

    def shard(self, net: nn.Module, blocks: list[nn.Module], precision: str) -> None:
        fully_shard_net(
            net,
            blocks,
            self.device_mesh["data_parallel"],
            self.reshard_after_forward,
            self.mp_policy(precision),
            self.offload_policy(),
        )


def fully_shard_net(
    net: nn.Module,
    blocks: list[nn.Module],
    mesh,
    reshard_after_forward: bool = True,
    mp_policy=None,
    offload_policy=None,
) -> None:
    """fully_shard each transformer block (one all-gather unit each), then the root for what is left (embeddings,
    final norm, heads; tied weights stay together there). The root keeps its weights gathered from forward to
    backward, as FSDP does by default."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

    # Blocks return their KV cache (views of k/v) beside the output; FSDP warns about views, but nothing in
    # lmforge writes into a block's outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    common = dict(
        mesh=mesh, mp_policy=mp_policy or MixedPrecisionPolicy(), offload_policy=offload_policy or OffloadPolicy()
    )
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard_after_forward, **common)
        _RESHARD_AFTER_FORWARD[block] = reshard_after_forward
    fully_shard(net, **common)
    _RESHARD_AFTER_FORWARD[net] = False  # FSDP's choice for the root
    # Entry points other than forward (T5.encode/decode in generation) run inside full_weights(), with the weights
    # already gathered. Not registered with register_fsdp_forward_method: T5.forward calls them itself, and such
    # nested root forwards make FSDP reshard the root at the end of every forward (and deadlock in full_weights).


@contextmanager
def full_weights(module: nn.Module) -> Iterator[None]:
    """Every rank holds the whole weights for the duration: for generation under FSDP (lmforge.generation.decoding
    enters it, once per decoding call). One all-gather per unit on entry (a collective: all ranks enter together)
    and none per forward, so ranks may then make different numbers of forward calls (greedy or beam search stopping
    early on their own batches) without waiting on each other, and may call entry points other than forward
    (T5.encode/decode). Costs the memory of the unsharded weights, as DDP always does. Outside FSDP it does
    nothing."""
    from torch.distributed.fsdp import FSDPModule

    from lmforge.parallel.pipeline import full_weights as pipeline_full_weights
    from lmforge.parallel.pipeline import split_of

    if split_of(module) is not None:  # a pipeline stage: the other stages' parts broadcast into copies
        with pipeline_full_weights(module):
            yield
        return
    # Units an enclosing full_weights() already gathered stay as they are (it reshards them when it ends).
    units = [m for m in module.modules() if isinstance(m, FSDPModule) and m not in _GATHERED]
    for m in units:
        _GATHERED.add(m)
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(_RESHARD_AFTER_FORWARD.get(m, True), recurse=False)
            _GATHERED.discard(m)
