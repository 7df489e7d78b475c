"""DDP and FSDP with 2 processes on CPU (gloo), as a user runs them: `python train.py trainer=ddp|fsdp ...`.

Parity: one process with a batch of 16 and two processes with 8 each see the same examples at every step
(the train loader shuffles in DistributedSampler's order; validation reads the same 32 blocks), start from the
same weights (seeded init, also under FSDP's meta-device build) and run in fp32. Their val/loss after 10 steps
then differs only by float reduction order: measured within 1e-6; the test allows 1e-4. A different global batch
moves val/loss by about 0.07 here (16 -> 8), so the tolerance can tell a wrong gradient average apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, run_dir_from_output, run_train
from parity import TOLERANCE, TWO_CPU_PROCESSES

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _args(corpus: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        "data=text",
        f"data.path={corpus}",
        "trainer.max_steps=10",
        "trainer.precision=32-true",
        "global_batch_size=16",
        *extra,
    ]


def _run(args: list[str], log_dir: Path) -> tuple[Path, dict]:
    proc = run_train(args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run_dir = run_dir_from_output(proc.stdout)
    assert log_dir in run_dir.parents
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def _run_folders(log_dir: Path) -> set[Path]:
    return {p for p in log_dir.glob("*/*/*") if p.is_dir()}  # <task>/runs|multiruns/<stamp>


@pytest.fixture(scope="module")
def log_dir(contained_environment) -> Path:
    return contained_environment / "logs"


@pytest.fixture(scope="module")
def single(text_corpus, log_dir):
    """One process, global batch 16 = micro batch 16 (and validation batches of 16: the same 32 blocks).
    Its 10 steps come from the token budget: 5120 tokens / (16 x 32 tokens per step)."""
    run_dir, s = _run(
        _args(text_corpus, "data.batch_size=16", "logger=csv", "trainer.max_steps=1000", "max_tokens=5120"), log_dir
    )
    assert s["steps"] == 10 and s["scale"]["max_tokens"] == 5120 and s["scale"]["tokens_per_step"] == 512
    return run_dir, s


def test_ddp_two_processes_match_one_process(single, text_corpus, log_dir):
    before = _run_folders(log_dir)
    run_dir, s = _run(_args(text_corpus, "trainer=ddp", *TWO_CPU_PROCESSES, "data.batch_size=8"), log_dir)
    assert _run_folders(log_dir) - before == {run_dir}, "DDP made more than one run folder"
    assert s["status"] == "completed" and s["steps"] == 10
    assert s["scale"]["strategy"] == "ddp" and s["scale"]["world_size"] == 2
    assert s["scale"]["accumulate_grad_batches"] == 1 and s["scale"]["global_batch_size"] == 16
    assert s["tokens"] == single[1]["tokens"] == 10 * 16 * 32
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE
    # W&B (the default logger, offline here) started once, by rank 0; only rank 0's log file.
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert [p.name for p in run_dir.glob("*.log")] == ["train.log"]


def test_global_batch_by_accumulation_matches(single, text_corpus, log_dir):
    """One process, micro batch 8: global_batch_size=16 makes it accumulate 2 micro batches per step."""
    _, s = _run(_args(text_corpus, "data.batch_size=8", "data.val_batch_size=16", "logger=csv"), log_dir)
    assert s["scale"]["accumulate_grad_batches"] == 2
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE


@pytest.fixture(scope="module")
def fsdp(text_corpus, log_dir):
    before = _run_folders(log_dir)
    run_dir, s = _run(
        _args(text_corpus, "trainer=fsdp", *TWO_CPU_PROCESSES, "data.batch_size=8", "logger=csv"), log_dir
    )
    assert _run_folders(log_dir) - before == {run_dir}, "FSDP made more than one run folder"
    return run_dir, s


def test_fsdp_two_processes_match_one_process(single, fsdp):
    run_dir, s = fsdp
    assert s["status"] == "completed" and s["steps"] == 10
    assert s["scale"]["strategy"] == "fsdp" and s["scale"]["world_size"] == 2 and s["scale"]["fsdp"]["meta_init"]
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < TOLERANCE
    assert (run_dir / "samples.txt").exists(), "samples need every rank of a sharded model"


def test_fsdp_checkpoint_consolidates_and_exports(fsdp):
    from lmforge.export import net_from_checkpoint, read_checkpoint
    from lmforge.parallel.checkpoint import consolidate

    last = fsdp[0] / "checkpoints" / "last.ckpt"
    full = consolidate(last)
    assert full.name == "last.full.ckpt" and full.is_file()
    for source in (last, full):  # export reads the sharded folder as it is, or the consolidated file
        net = net_from_checkpoint(read_checkpoint(source))  # strict load: every weight present
        assert net.lm_head.weight is net.wte.weight


def test_fsdp_seq2seq_generation_in_validation(tmp_path, log_dir):
    """T5 on pairs: validation decodes each rank's own batch (greedy, stopping at eos) for val/bleu; under FSDP
    the ranks decode with gathered weights, so different stopping points cannot deadlock them."""
    words = "the king queen lord lady sword crown night day love".split()
    lines = []
    for i in range(600):
        src = [words[(i * 7 + k * 3) % len(words)] for k in range(2 + i % 4)]
        lines.append(json.dumps({"source": " ".join(src), "target": " ".join(reversed(src))}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    _, s = _run(
        [
            "model=t5_tiny",
            "data=pairs",
            f"data.path={tmp_path / 'pairs.jsonl'}",
            "data.seq_len=32",
            "data.batch_size=8",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=2",
            "logger=csv",
            "trainer=fsdp",
            *TWO_CPU_PROCESSES,
        ],
        log_dir,
    )
    assert s["status"] == "completed" and s["objective"] == "seq2seq" and "val/bleu" in s["metrics"]


def test_fsdp_with_compile_and_activation_checkpointing_matches(single, text_corpus, log_dir):
    """torch.compile per block + activation checkpointing + FSDP, the riskiest combination (slowest test here:
    inductor compiles on both ranks). Compiled kernels may fuse float ops differently: tolerance 1e-3."""
    _, s = _run(
        _args(
            text_corpus,
            "trainer=fsdp",
            *TWO_CPU_PROCESSES,
            "data.batch_size=8",
            "logger=csv",
            "compile=true",
            "activation_checkpointing=true",
        ),
        log_dir,
    )
    assert s["scale"]["compile"] == "blocks" and s["scale"]["activation_checkpointing"] is True
    assert abs(s["metrics"]["val/loss"] - single[1]["metrics"]["val/loss"]) < 1e-3


def test_fsdp_checkpoint_is_sharded_and_resumes_on_another_world_size(fsdp, text_corpus, log_dir):
    run_dir, _ = fsdp
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "one shard file per rank"
    # Resume the 2-rank checkpoint on 1 rank: torch distributed checkpointing reshards on load.
    _, s = _run(
        _args(
            text_corpus,
            "trainer=fsdp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "data.batch_size=16",
            "logger=csv",
            "trainer.max_steps=14",
            f"ckpt_path={last}",
        ),
        log_dir,
    )
    assert s["status"] == "completed" and s["steps"] == 14
    assert s["tokens"] == 14 * 16 * 32  # the token count continues from the checkpoint


def test_global_batch_that_world_size_cannot_make_stops_before_training(text_corpus):
    proc = run_train(
        _args(text_corpus, "trainer=ddp", *TWO_CPU_PROCESSES, "data.batch_size=8", "global_batch_size=24", "logger=csv")
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "global_batch_size=24" in proc.stderr and "Traceback" not in proc.stderr


def test_multirun_with_ddp_makes_one_folder_per_job(text_corpus, log_dir):
    """Each job's ranks run that job (not the sweep again), in its folder, with one W&B run (the default logger)."""
    before = _run_folders(log_dir)
    proc = run_train(
        [
            "-m",
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "trainer=ddp",
            *TWO_CPU_PROCESSES,
            "trainer.max_steps=3,5",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    new = _run_folders(log_dir) - before
    assert len(new) == 1 and next(iter(new)).parent.name == "multiruns", f"expected one sweep folder, got {new}"
    sweep = next(iter(new))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    steps = [json.loads((sweep / j / "summary.json").read_text())["steps"] for j in jobs]
    assert steps == [3, 5]
    assert [len(list((sweep / j / "wandb").glob("offline-run-*"))) for j in jobs] == [1, 1]


def test_submitit_launcher_runs_a_ddp_job(text_corpus, log_dir):
    """hydra-submitit's local launcher (the SLURM launcher's local twin): the job runs under submitit, whose
    sys.argv is not train.py, and Lightning's second rank must still run this job in its folder."""
    before = _run_folders(log_dir)
    proc = run_train(
        [
            "-m",
            "hydra/launcher=submitit_local",
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "logger=csv",
            "trainer=ddp",
            *TWO_CPU_PROCESSES,
            "trainer.max_steps=3",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (sweep,) = _run_folders(log_dir) - before
    s = json.loads((sweep / "0" / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 3 and s["scale"]["world_size"] == 2


def _llama(args: list[str]) -> list[str]:
    return ["model=llama_tiny" if a.startswith("model=") else a for a in args]


@pytest.fixture(scope="module")
def single_llama(text_corpus, log_dir):
    """llama_tiny (RoPE, RMSNorm, SwiGLU, 4 query heads over 2 kv heads, tied embeddings) in one process."""
    return _run(_llama(_args(text_corpus, "data.batch_size=16", "logger=csv")), log_dir)[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_llama_two_processes_match_one_process(single_llama, text_corpus, log_dir, strategy):
    _, s = _run(
        _llama(_args(text_corpus, f"trainer={strategy}", *TWO_CPU_PROCESSES, "data.batch_size=8", "logger=csv")),
        log_dir,
    )
    assert s["status"] == "completed" and s["steps"] == 10 and s["model"] == "llama_tiny"
    assert s["scale"]["world_size"] == 2 and s["params"] == single_llama["params"]
    if strategy == "fsdp":
        assert s["scale"]["fsdp"]["meta_init"]
    assert abs(s["metrics"]["val/loss"] - single_llama["metrics"]["val/loss"]) < TOLERANCE
