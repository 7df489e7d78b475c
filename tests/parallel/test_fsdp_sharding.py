"""FSDP2 sharding of every model family over 2 real processes (gloo), without Lightning: the per-block
shards, the meta-device build, and the weights, loss and gradients against the same net in one process.

Each rank gets the same batch, so FSDP's averaged gradient equals the one-process gradient; fp32, tolerance 1e-5
(float reduction order only). Initial weights must be bit-identical: same seed, same draws (parallel/init.py).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmforge import generation
from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.models.t5 import T5
from lmforge.parallel.fsdp import full_weights, fully_shard_net
from lmforge.parallel.init import materialize
from lmforge.parallel.wrap import transformer_blocks

pytestmark = pytest.mark.distributed

WORLD = 2
SEED = 1234
NETS = {  # vocab 101: odd on purpose, so the embedding rows do not split evenly across ranks
    "gpt": (GPT, dict(vocab_size=101, max_seq_len=16, n_layer=2, n_head=2, d_model=16)),
    "bert": (
        BERT,
        dict(vocab_size=101, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=32, dropout=0.0, pad_token_id=3),
    ),
    "t5": (T5, dict(vocab_size=101, d_model=16, d_kv=8, d_ff=32, n_layer=2, n_head=2, dropout=0.0)),
    "llama": (
        Llama,
        dict(vocab_size=101, max_seq_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=16, tie_word_embeddings=True),
    ),
    "llama-untied": (Llama, dict(vocab_size=101, max_seq_len=16, n_layer=2, n_head=2, n_kv_head=1, d_model=16)),
}


def _loss(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = net(ids, decoder_input_ids=ids.roll(1, dims=1)) if isinstance(net, T5) else net(ids)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())


def _generation_calls(net: torch.nn.Module, ids: torch.Tensor) -> None:
    """The calls generation makes: forward, and T5's encode/decode entry points."""
    _loss(net, ids)
    if isinstance(net, T5):
        net.decode(ids[:, :3], net.encode(ids))


def _decode(net: torch.nn.Module, ids: torch.Tensor, rank: int) -> torch.Tensor:
    """lmforge.generation's call for the family (it gathers the weights itself, inside inference mode); the lengths
    differ per rank, so ranks make different numbers of forwards inside one gathering."""
    if isinstance(net, T5):
        return generation.beam_search(net, ids, max_new_tokens=2 + 3 * rank, num_beams=2)
    if isinstance(net, GPT | Llama):
        return generation.sample(net, ids[:, :4], 2 + 3 * rank, temperature=0.0)
    return generation.fill_mask(net, ids)


def _reference(name: str):
    cls, kw = NETS[name]
    with torch.device("meta"):
        net = cls(**kw)
    materialize(net, torch.device("cpu"), SEED)
    return net


def _worker(rank: int, port: int, names: list[str], queue) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        ids = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(0))
        for name in names:
            ref = _reference(name)
            cls, kw = NETS[name]
            with torch.device("meta"):
                net = cls(**kw)
            fully_shard_net(net, transformer_blocks(net), mesh)
            materialize(net, torch.device("cpu"), SEED)
            # every parameter is sharded and, gathered, equal to the one-process init
            sharded = dict(net.named_parameters())
            same_init = all(torch.equal(sharded[k].full_tensor(), p) for k, p in ref.named_parameters())
            local_rows = sharded[next(iter(sharded))].to_local().shape[0]
            loss = _loss(net, ids)
            loss.backward()
            ref_loss = _loss(ref, ids)
            ref_loss.backward()
            grads = dict(ref.named_parameters())
            grad_err = max((p.grad.full_tensor() - grads[k].grad).abs().max().item() for k, p in sharded.items())
            # gradient clipping (trainer.gradient_clip_val calls this) on sharded gradients: a tiny max_norm clips
            norms = (
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3).full_tensor().item(),
                torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e-3).item(),
            )
            clip_err = max((p.grad.full_tensor() - grads[k].grad).abs().max().item() for k, p in sharded.items())
            tied = net.lm_head.weight is next(iter(net.parameters()))
            # Generation: with full_weights, ranks may run different numbers of forwards (no collective inside);
            # nested uses are no-ops; afterwards the weights are sharded again.
            with torch.no_grad(), full_weights(net), full_weights(net):
                for _ in range(rank + 1):
                    _generation_calls(net, ids)
            decoded_same = torch.equal(_decode(net, ids, rank), _decode(ref, ids, rank))
            dist.barrier()
            first = next(iter(net.parameters()))  # the module's parameter now (FSDP swaps in gathered ones)
            resharded = hasattr(first, "to_local") and first.to_local().shape[0] == local_rows
            results[name] = dict(
                same_init=same_init,
                local_rows=local_rows,
                tied=tied,
                ref_tied=ref.lm_head.weight is next(iter(ref.parameters())),
                loss_err=abs(loss.item() - ref_loss.item()),
                grad_err=grad_err,
                norm_err=abs(norms[0] - norms[1]),
                clip_err=clip_err,
                resharded=resharded,
                decoded_same=decoded_same,
            )
        dist.barrier()  # no rank tears down while the other still finishes its last collective
    finally:
        dist.destroy_process_group()
    if rank == 0:
        queue.put(results)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_results():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(_free_port(), list(NETS), queue), nprocs=WORLD, join=True, start_method="spawn")
    return queue.get()


@pytest.mark.parametrize("name", list(NETS))
def test_sharded_net_matches_one_process(sharded_results, name):
    r = sharded_results[name]
    assert r["same_init"], "meta-device build + sharded init must give the one-process weights"
    assert r["tied"] == r["ref_tied"], "tied input/output embeddings must stay tied"
    assert r["loss_err"] < 1e-5
    assert r["grad_err"] < 1e-5
    assert r["norm_err"] < 1e-5 and r["clip_err"] < 1e-8, "clipping sharded gradients must match one process"
    assert r["resharded"], "full_weights() must leave the weights sharded again"
    assert r["decoded_same"], "lmforge.generation on the sharded net must decode as the one-process net"


def test_weights_are_split_across_ranks(sharded_results):
    assert sharded_results["gpt"]["local_rows"] == 51  # ceil(101 / 2) rows of the embedding on rank 0


def test_meta_build_keeps_ties_and_padding_row():
    bert = _reference("bert")
    assert bert.lm_head.weight is bert.wte.weight
    assert torch.count_nonzero(bert.wte.weight[3]) == 0, "BERT's padding row starts at zero"
    gpt = _reference("gpt")
    assert abs(gpt.wte.weight.std().item() - 0.02) < 0.004
    assert all(torch.equal(a, b) for a, b in zip(gpt.parameters(), _reference("gpt").parameters(), strict=True))
