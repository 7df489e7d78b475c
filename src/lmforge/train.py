"""Build everything from the Hydra config and run fit/validate; leave a complete run folder.

Order matters: the tokenizer must exist before the model, because the model's vocabulary
size is the tokenizer's (rounded up). That one run-time fact is filled in here, in one place.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.budget import apply_budget, check_budget_config, describe
from lmforge.config_tree import print_config_tree
from lmforge.console import say
from lmforge.data.tokenizer import copy_tokenizer
from lmforge.emissions.pre_run import planned_flops, pre_run_estimate
from lmforge.errors import LmforgeError
from lmforge.init_from import check_vocab_fits, load_init_net
from lmforge.loggers import finish_loggers
from lmforge.parallel.init import build_model
from lmforge.parallel.launch import isolated_job
from lmforge.parallel.wrap import ScaleOptions, describe_strategy
from lmforge.param_count import describe_parameters
from lmforge.protocols import NeedsTokenizer
from lmforge.summary import write_summary
from lmforge.validate import check_config

# Lightning 2.6 still builds torch's deprecated LeafSpec, and torch 2.13 warns about it on every logged dict:
# a message about the two libraries, not something a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)

VOCAB_MULTIPLE = 64  # pad the embedding to a multiple of 64: faster matmuls, no effect on loss


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _instantiate_group(group: DictConfig | None, **kwargs) -> list[Any]:
    """Instantiate each entry of a dict-of-configs group (callbacks, logger); skip null entries."""
    if not group:
        return []
    return [instantiate(c, **kwargs) for c in group.values() if c is not None and "_target_" in c]


def _hydra_info() -> tuple[str, list[str]]:
    if not HydraConfig.initialized():
        return "unknown", []
    hc = HydraConfig.get()
    return hc.runtime.choices.get("model", "unknown"), list(hc.overrides.task)


def _final_metrics(trainer: L.Trainer) -> dict[str, float]:
    # perf/* are the throughput callback's: its summary() owns the "perf" section
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.startswith("perf/")}


def _stopped_as(trainer: L.Trainer) -> str | None:
    return next((cb.final_status for cb in trainer.callbacks if getattr(cb, "final_status", None)), None)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate as configured; return the summary written to `<run dir>/summary.json`."""
    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    check_config(cfg)
    check_budget_config(cfg)
    scale_options = ScaleOptions.from_config(cfg)
    init_net = load_init_net(cfg)  # model.init_from: a local HF checkpoint sets the net and the tokenizer
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    objective_cls = get_class(cfg.model._target_)
    datamodule = instantiate(cfg.data)
    datamodule.build(objective_cls.special_tokens)
    if init_net is None:
        with open_dict(cfg):
            cfg.model.net.vocab_size = round_up(datamodule.vocab_size, VOCAB_MULTIPLE)
            cfg.model.net.update(objective_cls.net_token_ids(datamodule.special_ids))
        model = build_model(cfg, seed=cfg.seed)  # on the meta device under FSDP; same initial weights on any world size
    else:
        check_vocab_fits(init_net, datamodule.vocab_size, datamodule.special_ids, cfg.model.init_from)
        model = instantiate(cfg.model, net=init_net)
    model.scale_options = scale_options
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    datamodule.set_batch_builder(
        model.batch_builder(cfg.data.seq_len, datamodule.special_ids, tokenizer=datamodule.tokenizer)
    )
    if isinstance(model, NeedsTokenizer):  # e.g. seq2seq decodes its predictions to text for BLEU
        model.bind_tokenizer(datamodule.tokenizer, datamodule.special_ids)

    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    # Checkpoints come only from the configured callbacks (callbacks=none means none): Lightning would
    # otherwise add its own ModelCheckpoint under the logger's folder.
    checkpointing = cfg.trainer.get(
        "enable_checkpointing", any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=checkpointing
    )
    scale = {
        **describe_strategy(trainer, scale_options),
        **apply_budget(cfg, trainer, datamodule.batch_builder.block_len),
    }
    model.run_config = OmegaConf.to_container(cfg, resolve=True)  # with the accumulation and steps the budget set

    model_name, overrides = _hydra_info()
    summary: dict[str, Any] = {
        "status": "failed",
        "objective": model.name,
        "model": model_name,
        "params": model.num_parameters(),
        "steps": 0,
        "tokens": 0,
        "wall_time_s": 0.0,
        "metrics": {},
        "baseline": {"unigram_val_loss": datamodule.cache.meta["unigram_val_loss"]},
        "data": {
            "corpus": datamodule.corpus.name,
            "train_tokens": datamodule.cache.meta["tokens"]["train"],
            "val_tokens": datamodule.cache.meta["tokens"]["val"],
            "vocab_size": datamodule.vocab_size,
        },
        "overrides": overrides,
        "scale": scale,
    }
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        copy_tokenizer(datamodule.tokenizer_path, run_dir)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.get("print_config", True):
            print_config_tree(cfg)
        for lg in trainer.loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        say(
            f"{model.name} model '{model_name}': {summary['params'] / 1e6:.2f}M parameters, vocabulary "
            f"{datamodule.vocab_size}; corpus {summary['data']['corpus']}: {summary['data']['train_tokens']:,} "
            f"train / {summary['data']['val_tokens']:,} val tokens; unigram baseline val loss "
            f"{summary['baseline']['unigram_val_loss']:.3f}"
        )
        say(f"  parameters: {describe_parameters(model.net)}")
        say(f"{scale['strategy']} on {scale['world_size']} process(es), {scale['precision']}: {describe(scale)}")

    flops = planned_flops(model.net, datamodule.batch_builder, cfg, trainer, token_id=datamodule.vocab_size - 1)
    estimate = pre_run_estimate(cfg, summary["params"], trainer, callbacks, flops=flops)
    if estimate:
        summary["emissions"] = {"estimate": estimate}

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        summary["metrics"] = _final_metrics(trainer)  # validate() below resets the trainer's metrics
        stopped_as = _stopped_as(trainer)  # a callback that ended the run on purpose names it, e.g. "pruned"
        if not trainer.interrupted and not stopped_as:  # a final validation at the last step
            trainer.validate(model, datamodule=datamodule, verbose=False)
        summary["status"] = "interrupted" if trainer.interrupted else stopped_as or "completed"
    except SystemExit:  # Lightning turns Ctrl-C into SystemExit after a graceful shutdown
        summary["status"] = "interrupted"
        raise
    except BaseException as e:
        summary["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary.update(steps=trainer.global_step, tokens=model.tokens_seen, wall_time_s=time.time() - started)
        summary["metrics"] = {**summary["metrics"], **_final_metrics(trainer)}
        summary["perf"] = {"device": str(trainer.strategy.root_device)}  # the throughput callback adds its figures
        for cb in trainer.callbacks:  # callbacks that own a summary section (samples, emissions, perf, ...)
            if hasattr(cb, "summary_key") and hasattr(cb, "summary"):
                section = cb.summary()
                if section:
                    summary[cb.summary_key] = {**summary.get(cb.summary_key, {}), **section}
        if trainer.is_global_zero:
            write_summary(run_dir, summary)
            _print_run_folder(run_dir, summary)
        finish_loggers(trainer.loggers, summary, run_dir)  # W&B: close the run, print `wandb sync` if offline
    return summary


def _print_run_folder(run_dir: Path, summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    if "val/loss" in m:
        gap = summary["baseline"]["unigram_val_loss"] - m["val/loss"]
        say(
            f"\nval/loss {m['val/loss']:.3f} (ppl {m.get('val/ppl', float('nan')):.1f}), "
            f"{abs(gap):.2f} nats {'below' if gap >= 0 else 'above'} the unigram baseline; "
            f"{summary['steps']} steps, {summary['tokens']:,} tokens, "
            f"{summary['wall_time_s']:.0f}s"
        )
    say(f"Run folder ({summary['status']}): {run_dir}")
    for p in sorted(run_dir.iterdir()):
        print(f"  {p.name}{'/' if p.is_dir() else ''}")


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry used by the top-level train.py: user mistakes end with one message and exit status 2."""
    try:
        with isolated_job():  # ranks Lightning starts run this job, in its folder (lmforge/parallel/launch.py)
            return run(cfg)
    except Exception as e:
        user_error = _find_user_error(e)
        if user_error is None:
            raise
        print(f"\nerror: {user_error}", file=sys.stderr)
        sys.exit(2)


def _find_user_error(e: BaseException | None) -> LmforgeError | None:
    """Hydra's instantiate wraps constructor errors; look through the chain for ours."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, LmforgeError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
