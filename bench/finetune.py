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
import time
from pathlib import Path

from pretrain_runs import REPO, cache_dir, finetune_result, pretraining_texts, torch_threads, train


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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = a.work / stamp
    held_out = pretraining_texts(cache_dir(), work / "pretraining_texts")

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
        "from_pretrained": {
            **finetune_result(tuned),
            "init_from": {k: tuned["init_from"][k] for k in ("new", "dropped")},
        },
        "from_random_init": finetune_result(scratch),
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


if __name__ == "__main__":
    main()
