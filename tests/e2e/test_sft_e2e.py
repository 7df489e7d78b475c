"""SFT as a user runs it: `python train.py model=gpt_sft data=reverse_words ...`, then `python -m lmforge.generate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY, run_dir_from_output, run_train

SFT_TINY = [
    *[a for a in TINY if not a.startswith("model=")],
    "model=gpt_sft",
    "data=reverse_words",
    "data.source.n_examples=200",
    "data.val_fraction=0.2",
    "data.seq_len=48",
    "model.net.max_seq_len=64",
    "model.net.n_layer=2",
    "model.net.n_head=2",
    "model.net.d_model=64",
    "model.optimizer.lr=3e-3",
    "model.exact_match_samples=8",
    "trainer=cpu",
    "trainer.max_steps=40",
    "model.scheduler.warmup_steps=5",
    "logger=csv",
    "print_config=false",
]


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.generate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


@pytest.fixture(scope="module")
def sft_run():
    proc = run_train(SFT_TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir_from_output(proc.stdout)


def test_a_tiny_sft_run_reports_exact_match_and_real_token_counts(sft_run):
    summary = json.loads((sft_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objective"] == "sft"
    assert 0.0 <= summary["metrics"]["val/exact_match"] <= 1.0
    assert summary["metrics"]["val/loss"] > 0
    data = summary["data"]
    assert data["train_examples"] + data["val_examples"] == 200 and data["dropped_overlong"] == 0
    # tokens_seen counts real tokens: fewer than the padded batches' 40 x 8 x (longest example) would be
    assert 0 < summary["tokens"] < 40 * 8 * 48
    assert "prediction:" in (sft_run / "samples.txt").read_text()


@pytest.mark.slow
def test_generate_streams_an_answer_from_the_run_folder_and_refuses_bad_paths(sft_run, tmp_path):
    proc = generate(
        str(sft_run), "--prompt", "Reverse the words: king queen", "--max-new-tokens", "8", "--temperature", "0"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # what it printed is the run's greedy answer to the templated prompt, up to eos (a tiny model's answer may be
    # short or empty: its quality is the learning test's business)
    assert proc.stdout == greedy_answer(sft_run, "Reverse the words: king queen", 8) + "\n"
    ckpt = generate(str(sft_run / "checkpoints" / "last.ckpt"), "--prompt", "x", "--max-new-tokens", "4")
    assert ckpt.returncode == 0, ckpt.stderr[-2000:]
    missing = generate(str(tmp_path / "nowhere"), "--prompt", "x")
    assert missing.returncode == 2 and "no such run folder or checkpoint" in missing.stderr
    assert "Traceback" not in missing.stderr
    too_long = generate(str(sft_run), "--prompt", "word " * 100)
    assert too_long.returncode == 2 and "the prompt is" in too_long.stderr and "context" in too_long.stderr


def greedy_answer(run_dir, prompt: str, max_new: int) -> str:
    """The run's greedy answer computed in this process: the template, the tokenizer and the net of the run."""
    import torch
    from tokenizers import Tokenizer

    from lmforge import generation
    from lmforge.checkpoints import read_checkpoint
    from lmforge.data.instructions import check_template, render_prompt
    from lmforge.export import net_from_checkpoint

    ckpt = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    tok = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    text = render_prompt(prompt, check_template(ckpt["lmforge"]["config"]["data"]["template"]))
    ids = tok.encode(text, add_special_tokens=False).ids
    out = generation.sample(net_from_checkpoint(ckpt), torch.tensor([ids]), max_new, temperature=0.0)[0, len(ids) :]
    new = out.tolist()
    return tok.decode(new[: new.index(eos)] if eos in new else new)


@pytest.mark.slow  # a second training run
def test_a_causal_lm_run_continues_the_prompt_as_text(text_corpus):
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "trainer=cpu",
            "trainer.max_steps=10",
            "logger=csv",
            "print_config=false",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = generate(str(run_dir_from_output(proc.stdout)), "--prompt", "The king", "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.strip()) > 0


def test_instruction_data_with_a_plain_lm_objective_is_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n" for i in range(40)))
    proc = run_train([*TINY, "data=instructions", f"data.path={path}", "trainer=cpu", "logger=csv"])
    assert proc.returncode == 2
    assert "use model=gpt_sft or model=llama_sft" in proc.stderr
