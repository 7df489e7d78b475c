"""What only a GPU can show, in one run of under 8 minutes: the raw loop's MFU, train.py's MFU on the same model,
their ratio, peak memory, and the FSDP code path on one GPU. `bench/gpu.sh` runs it; results in
bench/results/gpu.json.

    bash bench/gpu.sh                        # on a CUDA machine: GPT-2 124M, seq 1024, bf16
    bash bench/gpu.sh --smoke --out /tmp/gpu.json   # the same steps on CPU with a tiny GPT (checks the code path)

(a) bench/mfu.py: a plain PyTorch loop over GPT-2 124M at sequence 1024 in bf16, with and without torch.compile.
(b) `python train.py experiment=gpt2_124m trainer=gpu compile=true` for a few hundred steps on the bundled corpus:
    its perf/mfu and tokens/s (steady state, summary.json) and the ratio to (a)'s compiled MFU.
(c) peak memory: (b)'s perf/memory_gb (CUDA max allocated).
(d) the same through trainer=fsdp on the one GPU (FSDP2's code path, not a speed-up).
Each step is a subprocess; one that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

FULL = {
    "mfu": [],
    "train": [
        "experiment=gpt2_124m",
        "compile=true",
        "trainer.max_steps=300",
        "trainer.val_check_interval=300",
        "trainer.limit_val_batches=4",
        "callbacks.model_checkpoint.every_n_steps=100000",
        "callbacks.samples.max_new_tokens=16",
        "logger=csv",
    ],
    "fsdp": ["trainer=fsdp", "trainer.devices=1", "trainer.max_steps=60", "trainer.val_check_interval=60"],
}
SMOKE = {
    "mfu": ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1"],
    "train": [
        "model=gpt_tiny",
        "tokenizer=char",
        "data.seq_len=32",
        "data.batch_size=4",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_steps=12",
        "trainer.val_check_interval=12",
        "trainer.limit_val_batches=1",
        "callbacks.model_checkpoint.every_n_steps=100000",
        "callbacks.samples.max_new_tokens=4",
        "logger=csv",
    ],
    "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=8"],
}


def run(cmd: list[str], timeout: int) -> tuple[bool, str, float]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s", time.perf_counter() - started
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:], time.perf_counter() - started


def raw_mfu(extra: list[str], tmp: Path) -> dict[str, Any]:
    out = tmp / "mfu.json"
    ok, log, seconds = run([sys.executable, str(REPO / "bench" / "mfu.py"), *extra, "--out", str(out)], 600)
    return {**(json.loads(out.read_text()) if ok else {"error": log}), "seconds": seconds}


def train(overrides: list[str], folder: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={folder}"]
    ok, log, seconds = run(cmd, 900)
    if not ok:
        return {"error": log, "seconds": seconds}
    s = json.loads((folder / "summary.json").read_text())
    perf = s.get("perf", {})
    return {
        "overrides": overrides,
        "seconds": seconds,
        "steps": s["steps"],
        "val_loss": s["metrics"].get("val/loss"),
        "mfu": perf.get("mfu"),
        "tokens_per_sec": perf.get("tokens_per_sec"),
        "step_time_s": perf.get("step_time_s"),
        "memory_gb": perf.get("memory_gb"),
        "precision": s["scale"].get("precision"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny GPT: the code path, not a figure")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    report: dict[str, Any] = {"smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import torch

        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:  # the report says what it could
        report["device"] = f"unknown ({e})"
    if not args.smoke and report["device"] == "cpu":
        raise SystemExit("bench/gpu.sh needs a CUDA GPU; on CPU run it with --smoke (the code path only).")
    with tempfile.TemporaryDirectory() as tmp:
        report["raw_loop"] = raw_mfu(plan["mfu"], Path(tmp))
        report["train"] = train(plan["train"], Path(tmp) / "train")
        report["fsdp"] = train([*plan["train"], *plan["fsdp"]], Path(tmp) / "fsdp")
    compiled = next((r["mfu"] for r in report["raw_loop"].get("results", []) if r["compile"] == "blocks"), None)
    if compiled and report["train"].get("mfu"):
        report["train_mfu_over_raw_loop_mfu"] = report["train"]["mfu"] / compiled
    report["total_seconds"] = sum(report[k].get("seconds", 0.0) for k in ("raw_loop", "train", "fsdp"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "raw_loop"}, indent=2))
    print(f"wrote {args.out}")
    failed = [k for k in ("raw_loop", "train", "fsdp") if "error" in report[k]]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their errors are in {args.out})")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    main()
