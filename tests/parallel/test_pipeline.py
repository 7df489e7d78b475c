"""Pipeline parallelism over 2 real processes (gloo), without Lightning: lmforge.parallel.pipeline's split, schedule
step, cross-stage gradient norm, evaluation and full_weights against the same net in one process.

Both ranks get the same batch (one pipeline = one model replica). fp32, tolerance 1e-5: the micro-batches' summed
losses over the whole batch's target count give the one-process gradient of the batch mean up to float order. A
wrong reduction (each micro-batch's mean loss summed, or gradients averaged over micro-batches twice) scales the
gradients by the number of micro-batches, and a dropped gradient (a stage's backward not run) leaves zeros: both far
above 1e-5. Every subprocess run has a timeout, so a hang in gloo's point-to-point ops fails the test.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from parity import free_port

from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.parallel.init import materialize
from lmforge.parallel.pipeline import PipelineStrategy, full_weights, stage_layers

WORLD = 2
SEED = 1234
TOLERANCE = 1e-5
NET = dict(vocab_size=96, max_seq_len=16, n_layer=3, n_head=2, d_model=32, tie_word_embeddings=False)
NETS = {"gpt": (GPT, NET), "llama": (Llama, {**NET, "n_head": 4, "n_kv_head": 2})}
BATCH = 8


def _net(name: str = "gpt") -> torch.nn.Module:
    cls, kwargs = NETS[name]
    with torch.device("meta"):
        net = cls(**kwargs)
    materialize(net, torch.device("cpu"), SEED)
    return net


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, NET["vocab_size"], (BATCH, 16), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 5:9] = -100  # some ignored targets: micro-batches then hold different target counts
    return {"input_ids": ids, "labels": labels}


def _reference(name: str) -> tuple[float, float, dict[str, torch.Tensor], torch.Tensor]:
    net = _net(name)
    b = _batch()
    logits = net(b["input_ids"])
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), b["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])
    with torch.no_grad():
        eval_logits = net(b["input_ids"][:2])
    return loss.item(), norm.item(), {n: p.grad.clone() for n, p in net.named_parameters()}, eval_logits


class _Objective:
    """What the strategy reads off a LightningModule: the net and its optimizer."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self._opt = torch.optim.SGD(net.parameters(), lr=0.0)

    def optimizers(self):
        return self._opt

    def lr_schedulers(self):
        return None


def _worker(rank: int, port: int, name: str, schedule: str, microbatches: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        strategy = PipelineStrategy(
            pipeline_parallel_size=WORLD, pipeline={"schedule": schedule, "microbatches": microbatches}
        )
        strategy.parallel_devices = [torch.device("cpu")]
        strategy._device_mesh = init_device_mesh(
            "cpu", (1, WORLD), mesh_dim_names=("data_parallel", "pipeline_parallel")
        )
        batched = []  # gloo's batch_isend_irecv (known to hang in some torch versions): which schedule uses it
        original = dist.batch_isend_irecv
        dist.batch_isend_irecv = lambda ops: batched.append(len(ops)) or original(ops)  # type: ignore[assignment]
        objective = _Objective(_net(name))
        objective.automatic_optimization = True
        blocks = strategy.split_objective(objective)
        assert objective.automatic_optimization is False
        objective._opt = torch.optim.SGD(objective.net.parameters(), lr=0.0)  # the stage's parameters only
        batch = _batch()
        loss = strategy.forward_backward(objective, batch)
        params = dict(objective.net.named_parameters())
        norm = strategy.grad_norm([p for p in params.values() if p.grad is not None])
        objective.net.eval()
        with torch.no_grad():
            val_loss, val_n = strategy.eval_loss(objective, batch)
        with full_weights(objective.net), torch.no_grad():
            full_logits = objective.net(batch["input_ids"][:2])
        result = {
            "loss": loss.item(),
            "norm": norm.item(),
            "val_loss": val_loss.item(),
            "val_n": val_n.item(),
            "grads": {n: p.grad.clone() for n, p in params.items()},
            "names": sorted(params),
            "blocks": len(blocks),
            "full_logits": full_logits,
            "batched_p2p": len(batched),
            "pruned_again": sorted(n for n, _ in objective.net.named_parameters()) == sorted(params),
        }
        out[rank] = result
        dist.barrier()  # both ranks leave together (a rank tearing gloo down early aborts the other)
    finally:
        dist.destroy_process_group()


def _spawn(name: str, schedule: str, microbatches: int) -> dict:
    ctx, port = mp.get_context("spawn"), free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=_worker, args=(r, port, name, schedule, microbatches, out)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
        assert not hung, f"{schedule}: a pipeline rank hung (killed after 180 s)"
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        return dict(out)


def test_balanced_split_counts_embeddings_and_head():
    big_vocab = GPT(**{**NET, "vocab_size": 4096, "n_layer": 4})
    # 4096 x 32 embedding + 16 x 32 positions in stage 0, 4096 x 32 head in the last: blocks (12.6k each) are small
    assert stage_layers(big_vocab, 2) == [[0, 1], [2, 3]]
    small_vocab = GPT(**{**NET, "vocab_size": 8, "n_layer": 4, "max_seq_len": 8})
    assert stage_layers(small_vocab, 2) == [[0, 1], [2, 3]]
    assert stage_layers(small_vocab, 3) in ([[0], [1, 2], [3]], [[0, 1], [2], [3]], [[0], [1], [2, 3]])
    assert stage_layers(small_vocab, 2, (3, 1)) == [[0, 1, 2], [3]]
    head_heavy = GPT(**{**NET, "vocab_size": 40000, "n_layer": 4})
    # the last stage holds the 40000 x 32 head and the first the same-sized embedding: 2 blocks each either way
    assert [len(s) for s in stage_layers(head_heavy, 2)] == [2, 2]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("name", "schedule", "microbatches"), [("gpt", "gpipe", 2), ("gpt", "1f1b", 4), ("llama", "1f1b", 2)]
)
def test_pipeline_matches_one_process(name: str, schedule: str, microbatches: int):
    ref_loss, ref_norm, ref_grads, ref_logits = _reference(name)
    got = _spawn(name, schedule, microbatches)
    first, last = got[0], got[1]
    # each stage holds only its blocks, the first the embeddings, the last the final norm and head
    plan, layers = NETS[name][0].pipeline_plan(), stage_layers(_net(name), WORLD)
    assert first["blocks"] == len(layers[0]) and last["blocks"] == len(layers[1])
    held = [tuple(f"{m}." for m in plan.first), tuple(f"{m}." for m in plan.last)]
    for rank, stage in enumerate((first, last)):
        own = held[rank] + tuple(f"blocks.{i}." for i in layers[rank])
        assert all(n.startswith(own) for n in stage["names"]), (rank, stage["names"])
    assert not set(first["names"]) & set(last["names"]), "a parameter lives in two stages"
    assert set(first["names"]) | set(last["names"]) == set(ref_grads), "each parameter in exactly one stage"
    for rank in (0, 1):
        r = got[rank]
        assert abs(r["loss"] - ref_loss) < TOLERANCE, (rank, r["loss"], ref_loss)  # the last stage's, on every rank
        assert abs(r["norm"] - ref_norm) < TOLERANCE, (rank, r["norm"], ref_norm)  # over both stages
        for n, g in r["grads"].items():
            assert torch.allclose(g, ref_grads[n], atol=TOLERANCE, rtol=0), (schedule, n)
        assert r["pruned_again"], "full_weights left the other stage's parts behind"
        # generation's full_weights: the whole net on each rank, as one process
        assert torch.allclose(r["full_logits"], ref_logits, atol=TOLERANCE, rtol=0)
    # GPipe's point-to-point ops are all-send or all-receive (plain isend/irecv); 1F1B's steady state mixes a send and
    # a receive in one batch_isend_irecv, which ran here without hanging (torch 2.13, gloo)
    assert (first["batched_p2p"] > 0) == (schedule == "1f1b" and microbatches > WORLD - 1)
    # validation: the forward-only pass gives the same loss on every rank
    assert got[0]["val_loss"] == got[1]["val_loss"] and got[0]["val_n"] == got[1]["val_n"] == BATCH * 15 - 4
    assert abs(got[0]["val_loss"] - ref_loss) < TOLERANCE  # dropout 0: eval loss = train loss at the same weights


def test_tied_embeddings_cannot_be_split():
    from lmforge.parallel.pipeline import _shared_between_stages

    tied = GPT(**{**NET, "tie_word_embeddings": True})
    assert _shared_between_stages(tied, tied.pipeline_plan())
    assert not _shared_between_stages(_net(), GPT.pipeline_plan())
    tied_llama = Llama(**{**NETS["llama"][1], "tie_word_embeddings": True})
    assert _shared_between_stages(tied_llama, tied_llama.pipeline_plan())


def test_balanced_split_of_a_single_stage():
    assert stage_layers(_net(), 1) == [[0, 1, 2]]
