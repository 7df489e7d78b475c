"""bench/memory.py's CPU smoke run (2 processes, gloo): every layout trains, and what each rank holds of the
parameters and optimizer state is what the layout promises. Peak device memory needs CUDA (null here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_memory_bench_layouts_hold_their_share(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            str(REPO / "bench" / "memory.py"),
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    held = {kind: r["params_and_optimizer_state_gb_per_rank"] for kind, r in results.items()}
    whole = held["ddp"][0]
    assert held["ddp"] == [whole, whole]  # every rank the whole net and its AdamW state
    for kind in ("fsdp", "fsdp_shard_grad_op"):  # each rank a half of every parameter (the tiny dims divide)
        assert held[kind] == [whole / 2, whole / 2], kind
    assert abs(sum(held["pp"]) - whole) < 1e-12 and min(held["pp"]) < whole  # the stages partition the net
    assert held["tp"][0] == held["tp"][1] and whole / 2 <= held["tp"][0] < whole  # norms stay replicated
    assert all(r["peak_memory_gb_per_rank"] == [None, None] for r in results.values())  # no CUDA here
