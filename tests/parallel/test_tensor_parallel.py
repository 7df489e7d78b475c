"""Tensor (+ sequence) parallelism over 2 real processes (gloo), without Lightning: the family's plan applied by
lmforge.parallel.tensor, then FSDP2 on the (size 1) data-parallel dimension, as the strategy does; the loss and every
gradient against the same net in one process, and the shards' shapes.

Both ranks get the same batch (one tensor-parallel group = one model replica). fp32, tolerance 1e-5: only the
float order of the partial sums differs. A missing all-reduce of a row-parallel output changes the loss by the
other rank's share of every residual update, and a dropped backward all-reduce of a column-parallel input leaves
the embedding's and norms' gradients with one rank's share: both far above 1e-5.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from parity import free_port
from torch.distributed.tensor import DTensor

from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.objectives.losses import token_cross_entropy
from lmforge.parallel.fsdp import fully_shard_net
from lmforge.parallel.init import materialize
from lmforge.parallel.tensor import apply_tensor_parallel, loss_parallel_step
from lmforge.parallel.wrap import transformer_blocks

pytestmark = [pytest.mark.slow, pytest.mark.distributed]  # about 35 s per case on 2 shared cores

WORLD = 2
SEED = 1234
TOLERANCE = 1e-5
NETS = {
    "gpt": (GPT, dict(vocab_size=96, max_seq_len=16, n_layer=2, n_head=2, d_model=32)),
    "llama": (
        Llama,
        dict(vocab_size=96, max_seq_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32, tie_word_embeddings=True),
    ),
    "llama-untied": (Llama, dict(vocab_size=96, max_seq_len=16, n_layer=2, n_head=2, n_kv_head=2, d_model=32)),
}
# column-parallel weights whose rows each rank holds half of
COLUMN_PARALLEL = {"gpt": "blocks.0.mlp.fc.weight", "llama": "blocks.0.attn.q.weight", "llama-untied": "lm_head.weight"}


def _loss(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(net(ids).flatten(0, 1).float(), ids.roll(-1, 1).flatten())


def _reference(name: str, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    cls, kwargs = NETS[name]
    with torch.device("meta"):
        net = cls(**kwargs)
    materialize(net, torch.device("cpu"), SEED)
    loss = _loss(net, ids)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _worker(rank: int, port: int, name: str, sequence_parallel: bool, out: dict, loss_parallel: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("data_parallel", "tensor_parallel"))
        cls, kwargs = NETS[name]
        with torch.device("meta"):
            net = cls(**kwargs)
        blocks = transformer_blocks(net)
        vocab_parallel = apply_tensor_parallel(net, blocks, mesh["tensor_parallel"], sequence_parallel)
        fully_shard_net(net, blocks, mesh["data_parallel"])
        materialize(net, torch.device("cpu"), SEED)
        ids = torch.randint(0, kwargs["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
        if loss_parallel:  # as FSDP2Strategy runs a training step: the objectives' loss, forward and backward
            assert vocab_parallel
            with loss_parallel_step(True):
                logits = net(ids)
                loss, _ = token_cross_entropy(logits, ids.roll(-1, 1))
                loss.backward()
            out["logits_sharded"] = isinstance(logits, DTensor) and logits.to_local().shape[-1] * WORLD == 96
            out["loss_is_plain"] = not isinstance(loss, DTensor)
        else:
            loss = _loss(net, ids)
            loss.backward()
        params = dict(net.named_parameters())
        shard = params[COLUMN_PARALLEL[name]]
        result = {
            "loss": loss.item(),
            "grads": {n: p.grad.full_tensor() for n, p in params.items()},
            "local_rows": shard.to_local().shape[0],
            "rows": shard.shape[0],
        }
        if rank == 0:
            out.update(result)
        # both ranks leave together: a rank that tears gloo down while the other still talks to it aborts
        # ("terminate called without an active exception", seen once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp+sp"])
@pytest.mark.parametrize("name", list(NETS))
def test_tensor_parallel_matches_one_process(name: str, sequence_parallel: bool):
    ids = torch.randint(0, NETS[name][1]["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    ref_loss, ref_grads = _reference(name, ids)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), name, sequence_parallel, out), nprocs=WORLD, join=True)
        got = dict(out)
    assert abs(got["loss"] - ref_loss) < TOLERANCE
    assert set(got["grads"]) == set(ref_grads)
    for n, g in ref_grads.items():
        assert torch.allclose(got["grads"][n], g, atol=TOLERANCE, rtol=0), n
    assert got["local_rows"] * WORLD == got["rows"]  # rank 0 holds half the rows of a column-parallel weight


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp+sp"])
def test_loss_parallel_matches_one_process_without_gathering_the_logits(sequence_parallel: bool):
    """Untied Llama: the LM head is vocabulary-parallel, and in a training step its logits stay split by vocabulary
    (each rank 48 of the 96 columns) while the loss and every gradient match one process's ordinary cross-entropy.
    A wrong reduction over the shards (e.g. a log-sum-exp of one rank's columns only) moves the loss by ~log 2."""
    name = "llama-untied"
    ids = torch.randint(0, NETS[name][1]["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    ref_loss, ref_grads = _reference(name, ids)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), name, sequence_parallel, out, True), nprocs=WORLD, join=True)
        got = dict(out)
    assert got["logits_sharded"] and got["loss_is_plain"]
    assert abs(got["loss"] - ref_loss) < TOLERANCE
    for n, g in ref_grads.items():
        assert torch.allclose(got["grads"][n], g, atol=TOLERANCE, rtol=0), n
