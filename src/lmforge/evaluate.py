"""Score a finished run on data, without writing Python:

    python -m lmforge.evaluate <run dir | .ckpt> [data.<key>=<value> ...] [--out eval.json]

The run's config.yaml (or the checkpoint's own copy) says how the data is read and which objective scores it;
the overrides change the data as on train.py's command line (`data.path=other.txt`, `data.test_path=held_out.txt`,
`data.test_fraction=0.1`). The tokenizer is always the run's tokenizer.json: the ids the model was trained on. The
checkpoint (a run folder's checkpoints/best.ckpt, else last.ckpt) is scored on the test split, or on the
validation split when there is none (said so), with the objective's own metrics (loss and perplexity; MLM accuracy;
seq2seq BLEU), printed and written to <run dir>/eval.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError
from lmforge.evaluation import has_test_split, scalar_metrics
from lmforge.export import find_tokenizer, net_from_checkpoint
from lmforge.parallel.init import instantiate_objective
from lmforge.protocols import NeedsTokenizer

# as in lmforge.train: a deprecation between Lightning and torch, nothing a user can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)

CHECKPOINTS = ("best.ckpt", "last.ckpt")  # which checkpoint of a run folder is scored, in order of preference
VOCAB_MULTIPLE = 64  # lmforge.train pads the embedding to a multiple of this


def find_run(target: str) -> tuple[Path | None, Path]:
    """(run folder or None, checkpoint) of a run folder or a checkpoint (a file, or an FSDP folder `*.ckpt`)."""
    path = Path(target).expanduser()
    if not path.exists():
        raise ConfigError(f"{target}: no such run folder or checkpoint. Give a run folder or a .ckpt file in one.")
    if path.is_dir() and not path.name.endswith(".ckpt"):
        if not (path / "config.yaml").is_file():
            raise ConfigError(
                f"{target} is not a run folder (it has no config.yaml). Give the folder `python train.py` printed "
                "as 'Run folder', or a .ckpt file."
            )
        for name in CHECKPOINTS:
            if (path / "checkpoints" / name).exists():
                return path, path / "checkpoints" / name
        raise ConfigError(
            f"the run folder {target} has no checkpoint (checkpoints/best.ckpt or last.ckpt): it was trained with "
            "callbacks=none, or stopped before its first save. There is nothing to evaluate."
        )
    run_dir = path.parent.parent  # <run dir>/checkpoints/<name>.ckpt
    return (run_dir if (run_dir / "config.yaml").is_file() else None), path


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """cfg with `data.<key>=<value>` overrides applied. config.yaml is resolved, so a key the corpus took from the
    data section by interpolation (data.corpus.path from data.path) is changed with it."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("data.") or key == "data.tokenizer" or key.startswith("data.tokenizer."):
            raise ConfigError(
                f"{item!r}: evaluate takes overrides of the data keys, as `data.<key>=<value>` (data.path=other.txt, "
                "data.test_path=held_out.txt); the model, tokenizer and data kind are the run's"
                + (" (data=... cannot change)" if key == "data" else "")
                + "."
            )
    with open_dict(cfg):
        for item in overrides:
            key, _, _ = item.partition("=")
            value = OmegaConf.from_dotlist([item])
            name = key.removeprefix("data.")
            old = OmegaConf.select(cfg, key, default=None)
            corpus = cfg.data.get("corpus")
            mirrored = corpus is not None and "." not in name and name in corpus and corpus[name] == old
            cfg.merge_with(value)
            if mirrored:
                corpus[name] = OmegaConf.select(cfg, key)
    return cfg


def check_tokenizer(net: Any, datamodule: Any, tokenizer: Path, init_from: str | None) -> None:
    """The run's tokenizer must be the one the checkpoint's net was trained with: its ids index the embeddings
    (lmforge.train sized them from it, rounded up to a multiple of 64, unless the net came from model.init_from)."""
    n, v = net.config.vocab_size, datamodule.vocab_size
    rounded = -(-v // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if v > n or (init_from is None and rounded != n):
        raise ConfigError(
            f"tokenizer mismatch: {tokenizer} has {v} tokens, but the checkpoint's net has a vocabulary of {n}"
            f"{'' if init_from else f' (a tokenizer of {n - VOCAB_MULTIPLE + 1} to {n} tokens)'}: the checkpoint "
            "was not trained with this tokenizer. Evaluate a run folder as train.py left it, or the .ckpt inside it."
        )


def evaluate(target: str, overrides: list[str] | None = None, out: str | None = None) -> dict[str, Any]:
    """Score the checkpoint; return what eval.json holds (and write it)."""
    run_dir, ckpt_path = find_run(target)
    ckpt = read_checkpoint(ckpt_path)
    if run_dir is not None:
        cfg = OmegaConf.load(run_dir / "config.yaml")
    elif ckpt["lmforge"].get("config"):
        cfg = OmegaConf.create(ckpt["lmforge"]["config"])
    else:
        raise ConfigError(f"{ckpt_path}: the checkpoint carries no config and has no run folder around it.")
    assert isinstance(cfg, DictConfig)
    tokenizer = (run_dir / "tokenizer.json") if run_dir is not None else find_tokenizer(ckpt_path)
    if tokenizer is None or not tokenizer.is_file():
        raise ConfigError(f"{ckpt_path}: no tokenizer.json in its run folder; evaluate needs the run's tokenizer.")
    cfg = with_overrides(cfg, overrides or [])
    with open_dict(cfg):  # the ids the model knows, whatever the data
        cfg.data.tokenizer = {"_target_": "lmforge.data.tokenizer.TokenizerSpec", "path": str(tokenizer)}
    L.seed_everything(cfg.get("seed", 0), verbose=False)

    net = net_from_checkpoint(ckpt)
    step = ckpt.get("global_step")
    del ckpt
    model = instantiate_objective(cfg.model, net=net)
    datamodule = instantiate(cfg.data)
    datamodule.build(type(model).special_tokens)
    check_tokenizer(net, datamodule, tokenizer, cfg.model.get("init_from"))
    datamodule.set_batch_builder(
        model.batch_builder(cfg.data.seq_len, datamodule.special_ids, tokenizer=datamodule.tokenizer)
    )
    if isinstance(model, NeedsTokenizer):  # seq2seq decodes its predictions for BLEU
        model.bind_tokenizer(datamodule.tokenizer, datamodule.special_ids)

    split = "test" if has_test_split(datamodule) else "val"
    if split == "val":
        print("no test split (data.test_fraction=0, no data.test_path): scoring the validation split")
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        precision=cfg.get("trainer", {}).get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=cfg.get("trainer", {}).get("limit_test_batches", 1.0),
    )
    (trainer.test if split == "test" else trainer.validate)(model, datamodule=datamodule, verbose=False)
    metrics = scalar_metrics(trainer, f"{split}/")
    facts = datamodule.summary_facts()
    result = {
        "split": split,
        "metrics": metrics,
        "checkpoint": {"path": str(ckpt_path.resolve()), "step": step},
        "data": {**facts["data"], "overrides": list(overrides or [])},
        "baseline": facts["baseline"],
    }
    for k, v in metrics.items():
        print(f"{k} {v:.4f}")
    baseline = facts["baseline"].get(f"unigram_{split}_loss")
    if baseline is not None:
        print(f"unigram baseline {split} loss {baseline:.4f}")
    path = Path(out) if out else (run_dir if run_dir is not None else ckpt_path.parent) / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmforge.evaluate", description="Score a finished run's checkpoint on its test (or val) split."
    )
    parser.add_argument("target", help="a run folder (its checkpoints/best.ckpt) or a .ckpt")
    parser.add_argument("overrides", nargs="*", help="data overrides: data.path=... data.test_path=...")
    parser.add_argument("--out", default=None, help="where eval.json goes (default: the run folder)")
    args = parser.parse_args(argv)
    try:
        evaluate(args.target, args.overrides, args.out)
    except Exception as e:
        from lmforge.train import _find_user_error

        user_error = _find_user_error(e)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
