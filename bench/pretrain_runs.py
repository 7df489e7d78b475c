"""What the pretrain-then-fine-tune benches share (bench/finetune.py, bench/objectives.py): a `python train.py` run
in a folder of its own, the pretraining texts (the bundled corpus without the genre task's validation plays), and
the figures of a fine-tuning run. Not a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.data.shakespeare import ShakespeareCorpus  # noqa: E402
from lmforge.data.shakespeare_genre import ShakespeareGenre  # noqa: E402

COMMON = ["trainer=cpu", "logger=csv", "print_config=false", "callbacks.emissions=null"]


def cache_dir() -> str:
    return os.environ.get("LMFORGE_CACHE_DIR", str(Path.home() / ".cache" / "lmforge"))


def train(args: list[str], run_dir: Path) -> dict:
    """`python train.py <args>` (+ COMMON) into run_dir; its summary.json, with the run's wall time as `wall_s`."""
    cmd = [sys.executable, str(REPO / "train.py"), *args, *COMMON, f"hydra.run.dir={run_dir}"]
    print("$ python train.py " + " ".join(args), flush=True)
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        sys.exit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_s"] = time.time() - started
    return summary


def pretraining_texts(cache_dir: str, folder: Path) -> list[str]:
    """Links to every text of the corpus except the genre task's validation plays; the plays left out, back."""
    texts = Path(ShakespeareCorpus(cache_dir).fetch())
    held_out = [p for plays in ShakespeareGenre(cache_dir).val_plays().values() for p in plays]
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(texts.glob("*_gut.txt")):
        if f.name.removesuffix("_gut.txt") not in held_out and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f)
    return held_out


def finetune_result(s: dict) -> dict:
    """A fine-tuning run's figures, from its summary.json (as `train` returns it)."""
    m = s["metrics"]
    return {
        "val_acc": m["val/acc"],
        "val_f1_macro": m["val/f1"],
        "val_loss": m["val/loss"],
        "steps": s["steps"],
        "params": s["params"],
        "wall_s": round(s["wall_s"], 1),
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
