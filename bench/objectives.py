"""Pretraining objectives compared downstream: MLM, MLM + NSP, causal LM and prefix LM, each pretrained on the same
texts, tokens, tokenizer and net size, then fine-tuned on the Shakespeare genre demo (data=shakespeare_genre), with
from-scratch baselines of both families.

    python bench/objectives.py                                   # writes bench/results/objectives.json
    python bench/objectives.py --pretrain-steps 10 --finetune-steps 5 --val-batches 2 --out /tmp/objectives.json
    python bench/objectives.py --resume logs/bench_objectives/<stamp>   # finish a run that stopped: done runs kept

Every stage is a `python train.py` run in a folder under --work (the machinery of bench/finetune.py, shared in
bench/pretrain_runs.py):
  1. pretrain   model=bert (MLM), model=bert_nsp (MLM + NSP; --sop adds model.pair_task=sop), model=gpt (CLM) and
                model=gpt_prefix (prefix LM), on the bundled corpus WITHOUT the genre task's validation plays
                (data=text over the other texts), for the same steps of the same batch of data.seq_len tokens, with
                n_layer x d_model (d_ff 4 x d_model) for both families. The first run trains the WordPiece tokenizer;
                every other run reads that tokenizer.json (the GPT runs add <|endoftext|> and <|pad|> at its end).
  2. finetune   model=bert_cls from each BERT run, model=gpt_cls from each GPT run (model.init_from=<run folder>),
                each right after its pretraining (a stage that fails, fails early),
  3. scratch    and each classifier from random initialisation with its family's tokenizer,
all with the same steps, batch, learning rate and warm-up (no generated samples: callbacks.samples=null). The
report gives val/acc, macro val/f1 and val/loss of every fine-tuning run, the chance level (1/3: the splits are
balanced), each pretraining's val/loss against its unigram baseline, its tokens/s (summary.json's perf, after the
warm-up steps) and every run's wall time.

The pretraining val/losses are not comparable ACROSS objectives: MLM scores the 15% masked tokens with both sides
visible, CLM every next token, prefix LM the suffix tokens only. Each is comparable with its own unigram baseline.
The default budgets (24 pretraining and 24 fine-tuning steps of a 2-layer d_model 128 net, ~25 minutes on 2 shared
CPU cores) show the bench runs end to end; what objectives do at a real budget needs --pretrain-steps in the
thousands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from pretrain_runs import REPO, cache_dir, finetune_result, pretraining_texts, torch_threads, train

# name -> (family, model config, extra overrides); the first one trains the tokenizer every run shares
OBJECTIVES: dict[str, tuple[str, str, list[str]]] = {
    "mlm": ("bert", "bert", []),
    "mlm_nsp": ("bert", "bert_nsp", []),
    "clm": ("gpt", "gpt", []),
    "prefix_lm": ("gpt", "gpt_prefix", []),
}
SOP = {"mlm_sop": ("bert", "bert_nsp", ["model.pair_task=sop"])}
QUIET = ["callbacks.samples=null"]  # no generated samples: seconds per run that measure nothing here


def stage(args: list[str], run_dir: Path) -> dict:
    """`train` once: a run folder that already holds a completed run (and its wall time) is read back instead."""
    wall = run_dir / "bench_wall_s.txt"
    if wall.is_file() and json.loads((run_dir / "summary.json").read_text())["status"] == "completed":
        print(f"(done before: {run_dir})", flush=True)
        return {**json.loads((run_dir / "summary.json").read_text()), "wall_s": float(wall.read_text())}
    s = train(args, run_dir)
    wall.write_text(f"{s['wall_s']:.1f}")
    return s


def size_args(family: str, n_layer: int, d_model: int) -> list[str]:
    """The same blocks for both families: BERT's d_ff and GPT's mlp_ratio (4, its config's) give 4 x d_model."""
    size = [f"model.net.n_layer={n_layer}", f"model.net.d_model={d_model}"]
    return [*size, f"model.net.d_ff={4 * d_model}"] if family == "bert" else [*size, "model.net.mlp_ratio=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=24)
    parser.add_argument("--finetune-steps", type=int, default=24)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--val-batches", type=int, default=10, help="fine-tuning: of 32 passages, a fixed sample")
    parser.add_argument("--sop", action="store_true", help="also MLM + sentence-order prediction (model.pair_task=sop)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate, every run")
    parser.add_argument("--work", type=Path, default=REPO / "logs" / "bench_objectives")
    parser.add_argument("--resume", type=Path, help="a --work/<stamp> folder: its completed runs are not rerun")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "objectives.json")
    a = parser.parse_args()
    started = time.time()
    load_before = list(os.getloadavg())
    work = a.resume or a.work / time.strftime("%Y%m%d-%H%M%S")
    texts = work / "pretraining_texts"
    held_out = pretraining_texts(cache_dir(), texts)
    objectives = {**OBJECTIVES, **(SOP if a.sop else {})}

    warmup = f"model.scheduler.warmup_steps={max(1, a.pretrain_steps // 10)}"  # the default 50 is most of a short run
    tokenizer: list[str] = ["tokenizer=wordpiece"]

    def finetune_args(family: str) -> list[str]:
        return [
            f"model={family}_cls",
            *size_args(family, a.n_layer, a.d_model),
            "data=shakespeare_genre",
            f"trainer.max_steps={a.finetune_steps}",
            f"trainer.val_check_interval={a.finetune_steps}",
            f"trainer.limit_val_batches={a.val_batches}",
            f"model.optimizer.lr={a.lr}",
            f"model.scheduler.warmup_steps={max(1, a.finetune_steps // 10)}",
            *QUIET,
        ]

    # each pretraining is fine-tuned right away, so that a stage that fails does so early (--resume skips the rest)
    pretrained: dict[str, dict] = {}
    finetuned: dict[str, dict] = {}
    task: dict = {}
    for name, (family, model, extra) in objectives.items():
        args = [
            f"model={model}",
            *extra,
            *size_args(family, a.n_layer, a.d_model),
            *tokenizer,
            "data=text",
            f"data.path={texts}",
            f"trainer.max_steps={a.pretrain_steps}",
            f"trainer.val_check_interval={a.pretrain_steps}",
            "trainer.limit_val_batches=5",
            warmup,
            *QUIET,
        ]
        s = stage(args, work / name)
        if tokenizer == ["tokenizer=wordpiece"]:
            tokenizer = ["tokenizer=pretrained", f"tokenizer.path={work / name / 'tokenizer.json'}"]
        m, perf = s["metrics"], s.get("perf", {})
        row = {
            "family": family,
            "command": "python train.py " + " ".join(args),
            "objective": s["objective"],
            "params": s["params"],
            "steps": s["steps"],
            "tokens": s["tokens"],
            "val_loss": m.get("val/loss"),
            "unigram_val_loss": s["baseline"]["unigram_val_loss"],
            "val_acc_masked_tokens": m.get("val/acc"),
            "val_nsp_acc": m.get("val/nsp_acc"),
            "tokens_per_sec": perf.get("tokens_per_sec"),
            "wall_s": round(s["wall_s"], 1),
        }
        pretrained[name] = {k: v for k, v in row.items() if v is not None}

        s = stage([*finetune_args(family), f"model.init_from={work / name}"], work / f"finetune_{name}")
        finetuned[f"from_{name}"] = {
            **finetune_result(s),
            "model": f"{family}_cls",
            "init_from": {"loaded_tensors": s["init_from"]["loaded_tensors"], "new": s["init_from"]["new"]},
        }
        task = task or {
            "data": "data=shakespeare_genre",
            "labels": s["data"]["labels"],
            "train_examples": s["data"]["train_examples"],
            "val_examples": s["data"]["val_examples"],
            "val_plays": held_out,
            "chance_acc": s["baseline"]["chance_acc"],
            "majority_val_acc": s["baseline"]["majority_val_acc"],
        }
    for family in dict.fromkeys(p["family"] for p in pretrained.values()):
        # random init with the family's tokenizer: the first pretraining run of that family has it
        source = next(n for n, p in pretrained.items() if p["family"] == family)
        tok = ["tokenizer=pretrained", f"tokenizer.path={work / source / 'tokenizer.json'}"]
        s = stage([*finetune_args(family), *tok], work / f"scratch_{family}")
        finetuned[f"{family}_from_scratch"] = {**finetune_result(s), "model": f"{family}_cls"}

    report = {
        "what": "pretraining objectives compared downstream: each pretrained on the same texts, steps, batch, "
        "tokenizer and net size, then fine-tuned on the Shakespeare genre task (comedy/history/tragedy, split by "
        "play) with the same budget; plus a from-scratch classifier of each family",
        "task": task,
        "pretraining": {
            "texts": "the bundled corpus without the task's validation plays",
            "net": f"{a.n_layer} layers, d_model {a.d_model}, d_ff {4 * a.d_model}, 4 heads, both families",
            "batch": "32 x 128 tokens (data.seq_len=128)",
            "warmup_steps": max(1, a.pretrain_steps // 10),
            "steps": a.pretrain_steps,
            "note": "val_loss is each objective's own loss (MLM: masked tokens; CLM: every next token; prefix LM: "
            "suffix tokens), comparable with its unigram baseline, not across objectives",
            "runs": pretrained,
        },
        "finetuning": {
            "commands": {f: "python train.py " + " ".join(finetune_args(f)) for f in ("bert", "gpt")},
            "val_passages_scored": min(a.val_batches * 32, task.get("val_examples", 0)),
            "runs": finetuned,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch_threads(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
            "note": "2 CPU cores shared with other work during the run: tokens/s and wall times are what that gave",
        },
        "wall_s": round(time.time() - started, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in finetuned.items():
        print(f"{name:>22}: val/acc {r['val_acc']:.3f}  macro F1 {r['val_f1_macro']:.3f}  val/loss {r['val_loss']:.3f}")
    print(f"chance {task['chance_acc']:.3f}; {report['wall_s']:.0f} s in all -> {a.out}")


if __name__ == "__main__":
    main()
