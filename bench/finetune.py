"""The measured point of pretraining: the Shakespeare genre demo (data=shakespeare_genre) fine-tuned from a pretrained
lmforge BERT and from random initialisation, with the same architecture, tokenizer, steps and optimizer.

    python bench/finetune.py                                   # writes bench/results/finetune.json
    python bench/finetune.py --pretrain-steps 20 --finetune-steps 10 --out /tmp/finetune.json   # smoke run

Every stage is a `python train.py` run, as a user would type it, in a folder under --work:
  1. pretrain  model=bert (MLM) on the bundled corpus WITHOUT the validation plays of the genre task (data=text over
               the other texts), so the pretrained model has never read a validation passage
  2. finetune  model=bert_cls data=shakespeare_genre model.init_from=<the pretraining run>
  3. scratch   the same, from random initialisation, with the pretraining run's tokenizer
The report gives val/acc, macro val/f1 and val/loss of both, the chance level (1/3: the splits are balanced) and the
budgets. Model and budgets are far below the defaults (model=bert is 4 layers of 256; conf/trainer/default.yaml
trains 800 steps) to keep the script to a few minutes on 2 shared cores: 2 layers of 128, 60 pretraining and 60
fine-tuning steps of 32 examples, validation on a fixed random sample of 10 batches (320 passages); what it shows is
the effect of that much pretraining, no more.
"""

from __future__ import annotations

import argparse
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


def train(args: list[str], run_dir: Path) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--val-batches", type=int, default=10, help="of 32 passages, a fixed random sample")
    parser.add_argument("--work", type=Path, default=REPO / "logs" / "bench_finetune")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "finetune.json")
    a = parser.parse_args()
    cache_dir = os.environ.get("LMFORGE_CACHE_DIR", str(Path.home() / ".cache" / "lmforge"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = a.work / stamp
    held_out = pretraining_texts(cache_dir, work / "pretraining_texts")

    size = [f"model.net.n_layer={a.n_layer}", f"model.net.d_model={a.d_model}", f"model.net.d_ff={4 * a.d_model}"]
    pretrain_args = [
        "model=bert",
        *size,
        "tokenizer=wordpiece",
        "data=text",
        f"data.path={work / 'pretraining_texts'}",
        f"trainer.max_steps={a.pretrain_steps}",
        f"trainer.val_check_interval={max(1, a.pretrain_steps // 2)}",
        "trainer.limit_val_batches=10",
    ]
    pre = train(pretrain_args, work / "pretrain")
    finetune = [
        "model=bert_cls",
        *size,
        "data=shakespeare_genre",
        f"trainer.max_steps={a.finetune_steps}",
        f"trainer.val_check_interval={a.finetune_steps}",
        f"trainer.limit_val_batches={a.val_batches}",
        "model.optimizer.lr=3e-4",
        f"model.scheduler.warmup_steps={max(1, a.finetune_steps // 10)}",
    ]
    tuned = train([*finetune, f"model.init_from={work / 'pretrain'}"], work / "finetune")
    # Random init, same everything: the pretraining run's tokenizer and dimensions (model=bert_cls is model=bert's)
    scratch = train(
        [*finetune, "tokenizer=pretrained", f"tokenizer.path={work / 'pretrain' / 'tokenizer.json'}"], work / "scratch"
    )

    def result(s: dict) -> dict:
        m = s["metrics"]
        return {
            "val_acc": m["val/acc"],
            "val_f1_macro": m["val/f1"],
            "val_loss": m["val/loss"],
            "steps": s["steps"],
            "params": s["params"],
            "wall_s": round(s["wall_s"], 1),
        }

    report = {
        "what": "Shakespeare genre (comedy/history/tragedy, split by play) fine-tuned from a pretrained lmforge BERT "
        "vs from random init, same architecture, tokenizer, steps and optimizer",
        "task": {
            "data": "data=shakespeare_genre",
            "labels": tuned["data"]["labels"],
            "train_examples": tuned["data"]["train_examples"],
            "val_examples": tuned["data"]["val_examples"],
            "val_plays": held_out,
            "chance_acc": tuned["baseline"]["chance_acc"],
            "majority_val_acc": tuned["baseline"]["majority_val_acc"],
        },
        "pretraining": {
            "command": "python train.py " + " ".join(pretrain_args),
            "texts": "the bundled corpus without the task's validation plays",
            "steps": pre["steps"],
            "tokens": pre["tokens"],
            "val_loss": pre["metrics"].get("val/loss"),
            "unigram_val_loss": pre["baseline"]["unigram_val_loss"],
            "budget_note": f"{a.pretrain_steps} steps of a {a.n_layer}-layer d_model {a.d_model} BERT (model=bert is 4 "
            "layers of 256, trained 800 steps by default): a small budget, to keep the script short",
            "wall_s": round(pre["wall_s"], 1),
        },
        "finetune_command": "python train.py " + " ".join(finetune),
        "val_passages_scored": min(a.val_batches * 32, tuned["data"]["val_examples"]),
        "from_pretrained": {**result(tuned), "init_from": {k: tuned["init_from"][k] for k in ("new", "dropped")}},
        "from_random_init": result(scratch),
        "threads": torch_threads(),
        "load_average": list(os.getloadavg()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    p, r = report["from_pretrained"], report["from_random_init"]
    print(
        f"val/acc from pretrained {p['val_acc']:.3f} (macro F1 {p['val_f1_macro']:.3f}), from random init "
        f"{r['val_acc']:.3f} (F1 {r['val_f1_macro']:.3f}); chance {report['task']['chance_acc']:.3f} -> {a.out}"
    )


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
