"""Checkpoints of `python train.py trainer=tp` (2 CPU processes, gloo): torch distributed checkpoint folders, one
shard per rank, resumed on the same layout and on others, consolidated into one file, exported to Hugging Face.

Every resume starts from step-5.ckpt of one uninterrupted 10-step TP run and trains to step 10 with the same global
batch (16), so it must end where that run ended. Where the resumed run's replica reads the whole batch of 16 as
the TP group does (TP=2, FSDP on 1 process, one process from the consolidated file), its per-step train/loss is
compared too: measured equal to the digit (the same reductions); allowed 1e-5. FSDP on 2 processes (two replicas
of 8) logs rank 0's half-batch loss, so there only the end's val/loss is compared: within 1e-4, as the parity tests
(a different global batch moves it by about 0.07; a wrong reshard of the loaded weights or optimizer by far more).
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

STEP_TOLERANCE = 1e-5
TP = ["trainer=tp", *TWO_CPU_PROCESSES]


def _args(corpus: Path, *extra: str) -> list[str]:
    # step-5.ckpt, the checkpoint the resumes start from
    return parity_args(corpus, "callbacks.model_checkpoint.every_n_steps=5", *extra)


def _run(args: list[str]) -> tuple[Path, dict]:
    return run_summary(args)


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv/metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )


@pytest.fixture(scope="module")
def full(text_corpus, contained_environment):
    """The uninterrupted TP=2 run of GPT (fused qkv: head-sharded), checkpointed at steps 5 and 10."""
    run_dir, s = _run(_args(text_corpus, *TP))
    assert s["status"] == "completed" and s["steps"] == 10
    step5 = run_dir / "checkpoints" / "step-5.ckpt"
    assert step5.is_dir() and len(list(step5.glob("*.distcp"))) == 2, "one shard file per rank"
    return run_dir, s


def _resume(full, corpus: Path, *layout: str, compare_steps: bool) -> dict:
    run_dir, s = full
    resumed_dir, r = _run(_args(corpus, *layout, f"ckpt_path={run_dir / 'checkpoints' / 'step-5.ckpt'}"))
    assert r["status"] == "completed" and r["steps"] == 10
    assert r["tokens"] == s["tokens"] == 10 * 16 * 32  # the token count continues from the checkpoint
    assert abs(r["metrics"]["val/loss"] - s["metrics"]["val/loss"]) < TOLERANCE
    if compare_steps:
        a, b = _losses(run_dir), _losses(resumed_dir)
        assert sorted(b) == [5, 6, 7, 8, 9]
        assert max(abs(a[k] - b[k]) for k in b) < STEP_TOLERANCE, (a, b)
    return r


def test_resumes_on_the_same_layout_step_for_step(full, text_corpus):
    r = _resume(full, text_corpus, *TP, compare_steps=True)
    assert r["scale"]["mesh"]["tp"] == 2


def test_resumes_with_fsdp_on_two_processes(full, text_corpus):
    """TP=2 -> FSDP over 2 replicas: each weight resharded from the tensor-parallel to the data-parallel dimension."""
    r = _resume(
        full,
        text_corpus,
        "trainer=fsdp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.batch_size=8",
        compare_steps=False,
    )
    assert r["scale"]["mesh"] == {"dp": 2, "tp": 1, "pp": 1, "sequence_parallel": False, "loss_parallel": False}


def test_resumes_with_fsdp_on_one_process_step_for_step(full, text_corpus):
    r = _resume(full, text_corpus, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1", compare_steps=True)
    assert r["scale"]["world_size"] == 1


def test_one_process_strategy_refuses_the_folder_and_resumes_it_consolidated(full, text_corpus, tmp_path):
    step5 = full[0] / "checkpoints" / "step-5.ckpt"
    proc = run_train(_args(text_corpus, f"ckpt_path={step5}"))  # the default strategy: one process, one file
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "sharded checkpoint folder" in proc.stderr and "python -m lmforge.parallel.checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and "Run folder" not in proc.stdout

    made = _module("lmforge.parallel.checkpoint", str(step5), str(tmp_path / "step5.ckpt"))
    assert made.returncode == 0, made.stderr[-3000:]
    consolidated = torch.load(tmp_path / "step5.ckpt", map_location="cpu", weights_only=True)
    assert consolidated["global_step"] == 5 and len(consolidated["optimizer_states"]) == 1
    r = _resume_file(full, text_corpus, tmp_path / "step5.ckpt")
    assert r["scale"]["strategy"] == "single_device"


def _resume_file(full, corpus: Path, ckpt: Path) -> dict:
    run_dir, s = full
    resumed_dir, r = _run(_args(corpus, f"ckpt_path={ckpt}"))
    assert r["status"] == "completed" and r["steps"] == 10 and r["tokens"] == s["tokens"]
    assert abs(r["metrics"]["val/loss"] - s["metrics"]["val/loss"]) < TOLERANCE
    a, b = _losses(run_dir), _losses(resumed_dir)
    assert sorted(b) == [5, 6, 7, 8, 9] and max(abs(a[k] - b[k]) for k in b) < STEP_TOLERANCE, (a, b)
    return r


@pytest.fixture(scope="module")
def llama(text_corpus, contained_environment):
    """Llama with untied embeddings under TP=2: the embedding's rows and the LM head's columns are split too."""
    run_dir, s = _run(
        _args(text_corpus, *TP, "model=llama_tiny", "model.net.tie_word_embeddings=false", "trainer.max_steps=4")
    )
    assert s["status"] == "completed" and s["model"] == "llama_tiny"
    return run_dir


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_consolidates_and_exports_with_the_same_logits_in_transformers(family, full, llama, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.export import net_from_checkpoint, read_checkpoint

    folder = (full[0] if family == "gpt" else llama) / "checkpoints" / "last.ckpt"
    assert folder.is_dir()
    made = _module("lmforge.parallel.checkpoint", str(folder))
    assert made.returncode == 0, made.stderr[-3000:]
    consolidated = folder.with_name("last.full.ckpt")
    assert consolidated.is_file()

    from_folder, from_file = read_checkpoint(folder), read_checkpoint(consolidated)
    assert from_folder["state_dict"].keys() == from_file["state_dict"].keys()
    for name, weight in from_folder["state_dict"].items():
        assert torch.equal(weight, from_file["state_dict"][name]), name
    net = net_from_checkpoint(from_file)  # strict: every weight present, whole (not one rank's shard)

    x = torch.randint(5, 200, (2, 24))
    for source in (folder, consolidated):  # export reads the folder as it is, or the consolidated file
        out = tmp_path / f"hf_{source.name}"
        proc = _module("lmforge.export", str(source), str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        with torch.no_grad():
            assert (net(x) - hf.eval()(input_ids=x).logits).abs().max().item() <= 1e-4
