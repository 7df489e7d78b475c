"""GPT-2-style vs Llama-style decoders and each positional encoding, on the default Shakespeare budget.

    python bench/architectures.py                     # writes bench/results/architectures.json (about an hour on CPU)
    python bench/architectures.py --max-steps 10 --out /tmp/architectures.json   # a quick check that it runs

Every row is `python train.py` as a user runs it, with the defaults of `model=gpt` / `model=llama` (same tokenizer,
same data, same seed, same optimizer and schedule, same token budget: trainer.max_steps x data.batch_size x
data.seq_len) and one override. The sizes are set so that parameter counts are within 5% of GPT's (the script
checks it and says so in the table): model=llama's d_ff 768 makes up for grouped-query attention's smaller k/v.
Reported per row: parameters, the final val/loss (the same validation blocks for all) and steady-state training
tokens/s (perf/tokens_per_sec of summary.json, whatever the machine's load was: rows run one after another).

Whatever the table shows is the result: no row is tuned (learning rate, warmup) for its architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ROWS: dict[str, list[str]] = {
    "GPT-2 style (learned, LayerNorm, GELU, MHA, biases)": ["model=gpt"],
    "Llama style (RoPE, RMSNorm, SwiGLU, GQA 4/2)": ["model=llama"],
    "Llama, position=learned": ["model=llama", "model.net.position=learned"],
    "Llama, position=sinusoidal": ["model=llama", "model.net.position=sinusoidal"],
    "Llama, position=alibi": ["model=llama", "model.net.position=alibi"],
    "Llama, position=none (NoPE)": ["model=llama", "model.net.position=none"],
}
PARAMS_WITHIN = 0.05


def train(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    run_dir = next(
        Path(line.split(": ", 1)[1].strip()) for line in proc.stdout.splitlines() if line.startswith("Run folder")
    )
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=None, help="trainer.max_steps (default: the config's, 800)")
    parser.add_argument("--rows", default=None, help="comma-separated substrings of the row names to run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "architectures.json")
    parser.add_argument("extra", nargs="*", help="more overrides for every row, e.g. trainer.precision=32-true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lmforge-architectures-"))
    env = {
        **os.environ,
        "LMFORGE_LOG_DIR": str(work / "logs"),  # the token cache stays where it is: every row reads the same one
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    common = ["logger=csv", *(["trainer.max_steps=" + str(args.max_steps)] if args.max_steps else []), *args.extra]
    if args.max_steps:  # validate at the end of a short run too
        common.append(f"trainer.val_check_interval={args.max_steps}")
    wanted = [r.strip() for r in args.rows.split(",")] if args.rows else None
    rows = {name: o for name, o in ROWS.items() if not wanted or any(w in name for w in wanted)}

    results = []
    for name, overrides in rows.items():
        started = time.time()
        s = train([*overrides, *common], env)
        results.append(
            {
                "architecture": name,
                "overrides": overrides,
                "params": s["params"],
                "val_loss": s["metrics"].get("val/loss"),
                "tokens_per_sec": (s.get("perf") or {}).get("tokens_per_sec"),
                "tokens": s["tokens"],
                "steps": s["steps"],
                "wall_s": round(time.time() - started, 1),
            }
        )
        print(f"{name}: {results[-1]}", flush=True)

    reference = results[0]["params"]
    for r in results:
        r["params_vs_first"] = round(r["params"] / reference - 1, 4)
    report = {
        "what": "val/loss and training tokens/s per architecture, same tokenizer, data, seed and token budget",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "common_overrides": common,
        "params_within": PARAMS_WITHIN,
        "params_all_within": all(abs(r["params_vs_first"]) <= PARAMS_WITHIN for r in results),
        "rows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print("\n| architecture | params | vs first | val/loss | tokens/s |\n|---|---:|---:|---:|---:|")
    for r in results:
        loss = f"{r['val_loss']:.3f}" if r["val_loss"] is not None else "-"
        speed = f"{r['tokens_per_sec']:,.0f}" if r["tokens_per_sec"] else "-"
        print(f"| {r['architecture']} | {r['params'] / 1e6:.2f}M | {r['params_vs_first']:+.1%} | {loss} | {speed} |")
    print(
        f"\nwrote {args.out}" + ("" if report["params_all_within"] else f" (params NOT all within {PARAMS_WITHIN:.0%})")
    )


if __name__ == "__main__":
    main()
