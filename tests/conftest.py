"""Shared fixtures. Every test writes only under pytest's tmp dirs: caches, runs, W&B, TMPDIR."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

import lmforge  # noqa: F401  (registers the config resolvers conf/ uses)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def contained_environment(tmp_path_factory):
    """Point every cache and run folder at a per-session tmp dir (also inherited by subprocesses)."""
    root = tmp_path_factory.mktemp("env")
    env = {
        "LMFORGE_CACHE_DIR": root / "cache",
        "LMFORGE_LOG_DIR": root / "logs",
        "TMPDIR": root / "tmp",
        "WANDB_DIR": root / "wandb",
        "WANDB_CACHE_DIR": root / "wandb_cache",
        "WANDB_CONFIG_DIR": root / "wandb_config",
        "WANDB_DATA_DIR": root / "wandb_data",
        "TORCHINDUCTOR_CACHE_DIR": root / "inductor",
        "MPLCONFIGDIR": root / "mpl",
    }
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        v.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(v)
    os.environ.pop("WANDB_API_KEY", None)  # tests never log online
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


WORDS = (
    "the king queen lord lady sword crown night day love death heart blood fair sweet good noble "
    "speak hear know come go see thou thee thy my mine his her our with from upon against"
).split()


def write_synthetic_corpus(folder: Path, n_files: int = 8, words_per_file: int = 3000, seed: int = 0) -> Path:
    """Plain-English-looking text from a fixed vocabulary: enough structure for BPE and a tiny model."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = []
        for _ in range(words_per_file // 10):
            line = " ".join(rng.choice(WORDS) for _ in range(10))
            lines.append(line[0].upper() + line[1:] + rng.choice(".,;!?"))
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"))


TINY = [
    "model=gpt_tiny",
    "data.seq_len=32",
    "data.batch_size=8",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.samples.max_new_tokens=16",
]


def run_train(args: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user types it, in a subprocess."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def run_dir_from_output(stdout: str) -> Path:
    for line in stdout.splitlines():
        if line.startswith("Run folder"):
            return Path(line.split(": ", 1)[1].strip())
    raise AssertionError(f"no 'Run folder' line in output:\n{stdout[-2000:]}")


def fit_then_validate(model: L.LightningModule, train, val, steps: int, root: Path) -> L.Trainer:
    """Train `steps` optimizer steps on CPU, quietly, with one validation at the end (learning tests)."""
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    return trainer


def some_slow(values, fast):
    """Parameters for a test, the ones not in `fast` marked slow: every case runs in CI (`-m slow`), and the default
    run keeps a few that cover each path (each case is a whole train.py process, ~7 s)."""
    return [pytest.param(v, marks=() if v in fast else pytest.mark.slow) for v in values]
