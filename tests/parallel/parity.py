"""What the multi-process parity tests share: one tiny fp32 run of 10 steps at a global batch of 16, as
`python train.py` in a subprocess, and its summary; the same settings on one process are the reference."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from conftest import TINY, run_dir_from_output, run_train

TOLERANCE = 1e-4  # val/loss against one process (fp32: measured within ~2e-6; a wrong reduction moves it ~1e-3+)
TWO_CPU_PROCESSES = ["trainer.accelerator=cpu", "trainer.devices=2"]


def parity_args(corpus: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        "data=text",
        f"data.path={corpus}",
        "trainer.max_steps=10",
        "trainer.precision=32-true",
        "global_batch_size=16",
        "data.batch_size=16",
        "logger=csv",
        *extra,
    ]


def run_summary(args: list[str], timeout: int = 900) -> tuple[Path, dict]:
    """The run folder and summary.json of `python train.py ARGS`; a hang in gloo fails at the timeout."""
    proc = run_train(args, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
