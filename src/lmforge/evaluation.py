"""Scoring a trained model on a held-out split, shared by the test after fit (lmforge.train, the `test` key) and
`python -m lmforge.evaluate`.

After fit, the test split (data.test_fraction / data.test_path) is scored with the BEST checkpoint's weights
(checkpoints/best.ckpt, by val/loss): the model a user would keep, not whatever the last step left. Without a best
checkpoint (callbacks=none, or no validation ran) the last weights are tested, and the summary says so. The
metrics are the objective's own validation metrics under `test/` (objectives/base.py: eval_step).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from lmforge.checkpoints import read_checkpoint
from lmforge.console import say
from lmforge.errors import ConfigError
from lmforge.protocols import HasTestSplit

BEST = "best.ckpt"
MODES: dict[str, str | bool] = {"auto": "auto", "true": True, "false": False}


def test_mode(cfg: DictConfig) -> str | bool:
    """`test` of train.yaml: auto (test when a test split exists), true (it must exist), false (never)."""
    value = cfg.get("test", "auto")
    mode = MODES.get(str(value).lower()) if isinstance(value, (bool, str)) else None
    if mode is None:
        raise ConfigError(f"test={value!r}: choose auto (test when a test split exists), true or false.")
    return mode


def check_test_config(cfg: DictConfig) -> None:
    """test=true on a run without a test split stops before compute, saying how to make one."""
    data = cfg.get("data") or {}
    source = data.get("source") or {}  # a bundled task may hold out its own test split (data=shakespeare_genre)
    own = isinstance(source, Mapping) and bool(source.get("test_plays_per_genre"))
    if test_mode(cfg) is True and not data.get("test_fraction") and not data.get("test_path") and not own:
        raise ConfigError(
            "test=true scores the best checkpoint on a test split, and this run has none: set "
            "data.test_fraction=0.05 (a share of the documents) or data.test_path=<file>, or use test=auto."
        )


def has_test_split(datamodule: Any) -> bool:
    return isinstance(datamodule, HasTestSplit) and datamodule.has_test


def best_checkpoint(run_dir: Path, callbacks: list[Any]) -> Path | None:
    """The run's best checkpoint: the checkpoint callback's, else <run dir>/checkpoints/best.ckpt; None if none."""
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.best_model_path and Path(cb.best_model_path).exists():
            return Path(cb.best_model_path)
    path = run_dir / "checkpoints" / BEST
    return path if path.exists() else None


def scalar_metrics(trainer: L.Trainer, prefix: str = "") -> dict[str, float]:
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if v.numel() == 1 and k.startswith(prefix) and not k.startswith("perf/")
    }


def test_after_fit(
    cfg: DictConfig, trainer: L.Trainer, callbacks: list[Any], model: Any, datamodule: Any, outcome: Any, run_dir: Path
) -> dict[str, Any] | None:
    """Score the best checkpoint on the test split once fit completed; summary.json's "test" section (None: no
    test). The test/* metrics stay in the trainer's metrics (and went to the loggers), where the summary reads
    them; the final validation's metrics, which trainer.test() clears, are moved into `outcome.metrics` first.
    Never raises: an error is put in the outcome (status "failed"), as fit's are, and re-raised once summary.json is
    written."""
    mode = test_mode(cfg)
    if mode is False or outcome.status != "completed" or outcome.exception is not None:
        return None
    if not has_test_split(datamodule):
        if mode is True:
            say(f"test=true, but data={type(datamodule).__name__} has no test split: nothing was tested")
        return None
    outcome.metrics = {**outcome.metrics, **scalar_metrics(trainer)}
    best = best_checkpoint(run_dir, callbacks)
    tokens_seen = model.tokens_seen  # loading a checkpoint would set it to the checkpoint's
    try:
        if best is None:
            step, where = trainer.global_step, "the last weights (no best.ckpt)"
            trainer.test(model, datamodule=datamodule, verbose=False)
        else:
            ckpt = read_checkpoint(best, "best checkpoint")
            step, where = int(ckpt["global_step"]), f"{best.name} (step {ckpt['global_step']})"
            if best.is_dir():  # a sharded (FSDP) checkpoint: Lightning loads each rank's shard
                del ckpt
                trainer.test(model, datamodule=datamodule, ckpt_path=str(best), verbose=False)
            else:
                model.load_state_dict(ckpt["state_dict"])
                del ckpt
                trainer.test(model, datamodule=datamodule, verbose=False)
    except BaseException as e:
        outcome.status, outcome.error, outcome.exception = "failed", f"{type(e).__name__}: {e}", e
        return {"error": outcome.error}
    finally:
        model.tokens_seen = tokens_seen
    metrics = scalar_metrics(trainer, "test/")
    facts = datamodule.summary_facts()
    section = {
        "checkpoint": None
        if best is None
        else str(best.relative_to(run_dir) if best.is_relative_to(run_dir) else best),
        "step": step,
        "tokens": facts["data"].get("test_tokens"),
        "unigram_test_loss": facts["baseline"].get("unigram_test_loss"),
        "metrics": metrics,
    }
    if best is None:
        section["checkpoint"], section["note"] = None, "no best.ckpt: the last weights were tested"
    if trainer.is_global_zero and "test/loss" in metrics:
        baseline = section["unigram_test_loss"]
        versus = f"; unigram baseline {baseline:.3f}" if baseline is not None else ""
        ppl = f" (ppl {metrics['test/ppl']:.1f})" if "test/ppl" in metrics else ""
        # the task's own metrics beside the loss: a classifier's accuracy and F1, SFT's exact match, BLEU
        others = "".join(f", {k} {v:.3f}" for k, v in sorted(metrics.items()) if k not in ("test/loss", "test/ppl"))
        say(f"test/loss {metrics['test/loss']:.3f}{ppl}{others} from {where}{versus}")
    return section
