"""`python train.py trainer=pp` with 2 processes on CPU (gloo), as a user runs it, against one process.

Parity: one pipeline of 2 stages is one model replica: both ranks read the same batch of 16 (the data-parallel rank,
0 for both, decides the shard), split into micro-batches by the schedule, so the run matches one process with
data.batch_size=16 step for step. Both runs untie the embeddings (model.net.tie_word_embeddings=false), which
pipeline parallelism needs. fp32; measured within 2e-6 (val/loss; train/loss, lr and grad_norm identical at every
step to 6 digits), the test allows 1e-4 as tests/parallel/test_distributed.py does. Gradient clipping at 1.0 is
active in these steps (grad_norm 0.9-1.6), so gradients scaled by the number of micro-batches (a wrong reduction)
change the updates; a stage's gradients dropped leaves its weights at their init: both move val/loss far more.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_train
from parity import TOLERANCE, TWO_CPU_PROCESSES, parity_args, run_summary

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

PP_ARGS = ["model.net.tie_word_embeddings=false"]  # pipeline stages cannot share the embedding with the head


def _args(corpus: Path, *extra: str) -> list[str]:
    return parity_args(corpus, *PP_ARGS, *extra)


def _run(args: list[str]) -> tuple[Path, dict]:
    return run_summary(args, timeout=600)


@pytest.fixture(scope="module")
def single(text_corpus, contained_environment):
    return _run(_args(text_corpus))


@pytest.mark.parametrize(("schedule", "microbatches"), [("gpipe", 2), ("1f1b", 4)], ids=["gpipe-2", "1f1b-4"])
def test_pp_two_processes_match_one_process(single, text_corpus, schedule, microbatches):
    run_dir, s = _run(
        _args(
            text_corpus,
            "trainer=pp",
            *TWO_CPU_PROCESSES,
            f"trainer.strategy.pipeline.schedule={schedule}",
            f"trainer.strategy.pipeline.microbatches={microbatches}",
        )
    )
    assert s["status"] == "completed" and s["steps"] == 10
    assert s["scale"]["strategy"] == "pipeline" and s["scale"]["world_size"] == 2
    assert s["scale"]["mesh"] == {"dp": 1, "tp": 1, "pp": 2}
    assert s["scale"]["data_parallel_size"] == 1
    assert s["scale"]["pipeline"] == {
        "schedule": schedule,
        "microbatches": microbatches,
        "layers_per_stage": None,
        "stages": [{"blocks": [0]}, {"blocks": [1]}],
    }
    # one pipeline: the batch both stages share is counted once (tokens, tokens/s)
    assert s["scale"]["global_batch_size"] == 16 and s["tokens"] == single[1]["tokens"] == 10 * 16 * 32
    assert s["params"] == single[1]["params"]
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE
    assert abs(s["metrics"]["train/loss"] - single[1]["metrics"]["train/loss"]) < TOLERANCE
    # MFU's FLOPs are the batch's once per pipeline (each stage credited its 1/pp), as one process counts them
    per_token, one_per_token = (r["perf"]["flops_per_sec"] / r["perf"]["tokens_per_sec"] for r in (s, single[1]))
    assert per_token == pytest.approx(one_per_token, rel=1e-6)
    # the last stage's samples, generated with the whole net gathered, reach rank 0's run folder
    assert s["samples"]["count"] == 3 and (run_dir / "samples.txt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()  # one shard per stage (torch distributed checkpoint)


def test_dp_by_pp_mesh_of_four_processes_matches_one_process(single, text_corpus):
    """2 data-parallel replicas x 2 pipeline stages: each replica reads 8 of the 16 examples of a step (as DDP's
    ranks do) and every stage's gradients are averaged over its replicas."""
    _, s = _run(_args(text_corpus, "trainer=pp", "trainer.accelerator=cpu", "trainer.devices=4", "data.batch_size=8"))
    assert s["status"] == "completed" and s["steps"] == 10
    assert s["scale"]["mesh"] == {"dp": 2, "tp": 1, "pp": 2}
    assert s["scale"]["world_size"] == 4 and s["scale"]["data_parallel_size"] == 2
    assert s["scale"]["global_batch_size"] == 16 and s["tokens"] == single[1]["tokens"]
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE
    # the logged loss is the replicas' mean: the whole global batch's, as one process logs it
    assert abs(s["metrics"]["train/loss"] - single[1]["metrics"]["train/loss"]) < TOLERANCE


def test_pp_with_gradient_accumulation_matches_one_process(single, text_corpus):
    """global_batch_size=16 from batches of 8: two batches' gradients added (each weighted 1/2) per optimizer step,
    stepped where Lightning's loop steps; validation batches of 16 read the same 32 blocks as one process."""
    _, s = _run(_args(text_corpus, "trainer=pp", *TWO_CPU_PROCESSES, "data.batch_size=8", "data.val_batch_size=16"))
    assert s["status"] == "completed" and s["steps"] == 10 and s["scale"]["accumulate_grad_batches"] == 2
    assert s["tokens"] == single[1]["tokens"]
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE


def _module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )


def _train_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv/metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_pp_checkpoint_resumes_the_run(text_corpus):
    """From step 5 of a 10-step PP run, the resumed run gives the uninterrupted run's train/loss at every later step
    and its val/loss: each stage reads back its own weights and optimizer state. The same from the folder
    consolidated into one file, resumed on one process; and the folder exports."""
    pp = ["trainer=pp", *TWO_CPU_PROCESSES, "callbacks.model_checkpoint.every_n_steps=5"]
    whole_dir, whole = _run(_args(text_corpus, *pp))
    step5 = whole_dir / "checkpoints" / "step-5.ckpt"
    assert step5.is_dir() and len(list(step5.glob("*.distcp"))) == 2, "one shard file per stage"
    resumed_dir, resumed = _run(_args(text_corpus, *pp, f"ckpt_path={step5}"))
    assert resumed["status"] == "completed" and resumed["steps"] == 10 and resumed["tokens"] == whole["tokens"]
    later = {k: v for k, v in _train_losses(whole_dir).items() if k >= 5}
    got = _train_losses(resumed_dir)
    assert later and all(abs(got[k] - v) < 1e-5 for k, v in later.items()), (got, later)
    assert abs(resumed["metrics"]["val/loss"] - whole["metrics"]["val/loss"]) < TOLERANCE

    # FSDP reads its own folders' optimizer layout, not PP's: refused before compute, with the fixes
    refused = run_train(
        _args(text_corpus, "trainer=fsdp", *TWO_CPU_PROCESSES, "data.batch_size=8", f"ckpt_path={step5}")
    )
    assert refused.returncode == 2 and "written by trainer=pp" in refused.stderr, refused.stderr[-2000:]

    # the folder holds the whole net under its own names: it exports as it is, with the weights of every stage
    transformers = pytest.importorskip("transformers")
    from lmforge.export import net_from_checkpoint, read_checkpoint

    last, out = whole_dir / "checkpoints" / "last.ckpt", whole_dir / "hf"
    proc = _module("lmforge.export", str(last), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    net = net_from_checkpoint(read_checkpoint(last))  # strict: every weight present
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = torch.randint(5, 200, (2, 24))
    with torch.no_grad():
        assert (net(x) - hf.eval()(input_ids=x).logits).abs().max().item() <= 1e-4

    # consolidated into one file (the flattened optimizer state turned positional), step 5 resumes on one process
    made = _module("lmforge.parallel.checkpoint", str(step5))
    assert made.returncode == 0, made.stderr[-3000:]
    one_dir, one = _run(_args(text_corpus, f"ckpt_path={step5.with_name('step-5.full.ckpt')}"))
    assert one["steps"] == 10 and one["tokens"] == whole["tokens"]
    got = _train_losses(one_dir)
    assert all(abs(got[k] - v) < 1e-5 for k, v in later.items()), (got, later)
    assert abs(one["metrics"]["val/loss"] - whole["metrics"]["val/loss"]) < TOLERANCE


def test_pp_llama_matches_one_process(text_corpus):
    llama = ["model=llama_tiny"]
    _, one = _run(_args(text_corpus, *llama))
    _, s = _run(_args(text_corpus, *llama, "trainer=pp", *TWO_CPU_PROCESSES, "trainer.strategy.pipeline.schedule=1f1b"))
    assert s["status"] == "completed" and s["scale"]["mesh"] == {"dp": 1, "tp": 1, "pp": 2}
    assert abs(s["metrics"]["val/loss"] - one["metrics"]["val/loss"]) < TOLERANCE


def test_pp_refuses_tied_embeddings_before_compute(text_corpus):
    proc = run_train([*_args(text_corpus, "trainer=pp", *TWO_CPU_PROCESSES), "model.net.tie_word_embeddings=true"])
    assert proc.returncode == 2
    assert "model.net.tie_word_embeddings=false" in proc.stderr
    assert "Initializing distributed" not in proc.stdout + proc.stderr  # no process group was started
