"""`python train.py trainer=tp` with 2 processes on CPU (gloo), as a user runs it, against one process.

Parity: one tensor-parallel group of 2 ranks is one model replica: both ranks read the same batch of 16 (the
data-parallel rank, 0 for both, decides the shard), so the run matches one process with data.batch_size=16 step for
step. fp32; measured within 1e-6, the test allows 1e-4 (as tests/parallel/test_distributed.py: a different global
batch moves val/loss by about 0.07, a dropped all-reduce of the row-parallel outputs by far more).
"""

from __future__ import annotations

import pytest
from parity import TOLERANCE, TWO_CPU_PROCESSES, parity_args, run_summary

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def single(text_corpus, contained_environment):
    return run_summary(parity_args(text_corpus))


@pytest.fixture(scope="module")
def tp(text_corpus, contained_environment):
    return run_summary(parity_args(text_corpus, "trainer=tp", *TWO_CPU_PROCESSES))


def test_tp_two_processes_match_one_process(single, tp):
    _, s = tp
    assert s["status"] == "completed" and s["steps"] == 10
    assert s["scale"]["mesh"] == {"dp": 1, "tp": 2, "pp": 1, "sequence_parallel": False, "loss_parallel": False}
    # one replica: the batch both ranks share is counted once
    assert s["scale"]["global_batch_size"] == 16 and s["tokens"] == single[1]["tokens"] == 10 * 16 * 32
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE


def test_tp_checkpoint_resumes(tp, text_corpus):
    run_dir, _ = tp
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "one shard file per rank"
    _, s = run_summary(
        parity_args(text_corpus, "trainer=tp", *TWO_CPU_PROCESSES, "trainer.max_steps=14", f"ckpt_path={last}")
    )
    assert s["status"] == "completed" and s["steps"] == 14
    assert s["tokens"] == 14 * 16 * 32  # the token count continues from the checkpoint


def test_fsdp_by_tp_mesh_of_four_processes_matches_one_process(single, text_corpus):
    """The 2-D mesh: 2 data-parallel replicas (FSDP2 between them) x 2 tensor-parallel ranks each; each replica
    reads 8 of the 16 examples of a step, as DDP's two ranks do."""
    _, s = run_summary(
        parity_args(text_corpus, "trainer=tp", "trainer.accelerator=cpu", "trainer.devices=4", "data.batch_size=8")
    )
    assert s["status"] == "completed" and s["steps"] == 10
    assert s["scale"]["mesh"] == {"dp": 2, "tp": 2, "pp": 1, "sequence_parallel": False, "loss_parallel": False}
    assert s["scale"]["world_size"] == 4 and s["scale"]["data_parallel_size"] == 2
    assert s["tokens"] == single[1]["tokens"]
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE


LLAMA_UNTIED = [
    "model=llama",
    "model.net.n_layer=2",
    "model.net.d_model=32",
    "model.net.n_head=2",
    "model.net.n_kv_head=2",
    "model.net.d_ff=64",
    "model.net.max_seq_len=32",
    "model.net.tie_word_embeddings=false",
]


def test_loss_parallel_training_matches_one_process_and_the_gathered_loss(text_corpus):
    """Untied Llama under trainer=tp: its LM head is vocabulary-parallel, so training computes the cross-entropy from
    the shards (loss_parallel, the default) — the same val/loss as one process and as gathering the logits."""
    args = [a for a in parity_args(text_corpus) if not a.startswith("model=")] + LLAMA_UNTIED
    _, one = run_summary(args)
    _, sharded = run_summary([*args, "trainer=tp", *TWO_CPU_PROCESSES])
    _, gathered = run_summary([*args, "trainer=tp", *TWO_CPU_PROCESSES, "trainer.strategy.loss_parallel=false"])
    assert sharded["scale"]["mesh"]["loss_parallel"] is True and gathered["scale"]["mesh"]["loss_parallel"] is False
    for s in (sharded, gathered):
        assert abs(s["metrics"]["val/loss"] - one["metrics"]["val/loss"]) < TOLERANCE
        assert abs(s["metrics"]["train/loss"] - one["metrics"]["train/loss"]) < TOLERANCE
