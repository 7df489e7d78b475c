"""Build everything from the Hydra config and run fit/validate; leave a complete run folder.

`run` goes through six phases, each a function that returns what the next ones need:

  build_data       the data module, with its tokenizer built (the model's vocabulary is the tokenizer's)
  build_objective  the objective and its net, with the run-time facts the config cannot know filled in
  build_trainer    the token budget planned for the world size, then the Trainer with the final values
  write_header     the run folder's config and tokenizer, and what the console says before training
  fit              fit, then a last validation; what happened, as an `Outcome`
  summarize        summary.json's content from the header facts and the outcome
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.budget import describe, plan_budget
from lmforge.callbacks.preemption import EXIT_CODES, Preemption
from lmforge.checkpoint_io import AtomicCheckpointIO
from lmforge.config_tree import print_config_tree
from lmforge.console import log, say
from lmforge.data.tokenizer import copy_tokenizer
from lmforge.emissions.pre_run import planned_flops, pre_run_estimate
from lmforge.errors import ConfigError, LmforgeError, folder_error
from lmforge.evaluation import check_test_config, test_after_fit
from lmforge.init_from import check_vocab_fits, load_init
from lmforge.init_weights import InitWeights, describe_init
from lmforge.loggers import finish_loggers
from lmforge.objectives.base import LMObjective
from lmforge.parallel.init import build_model, instantiate_objective
from lmforge.parallel.launch import isolated_job
from lmforge.parallel.pipeline import check_pipeline_parallel
from lmforge.parallel.tensor import check_tensor_parallel
from lmforge.parallel.world import planned_world_size
from lmforge.parallel.wrap import ScaleOptions, describe_strategy
from lmforge.param_count import describe_parameters
from lmforge.protocols import (
    EndsRunOnPurpose,
    LabelledData,
    NeedsLabels,
    NeedsTokenizer,
    RunData,
    SummarySection,
)
from lmforge.resume import ApplyOptimizerChanges, NothingToTrain, check_changes, check_steps_left, plan_resume
from lmforge.summary import write_summary
from lmforge.threads import apply_threads, choose_threads
from lmforge.validate import check_config

# Lightning 2.6 still builds torch's deprecated LeafSpec, and torch 2.13 warns about it on every logged dict:
# a message about the two libraries, not something a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)

VOCAB_MULTIPLE = 64  # pad the embedding to a multiple of 64: faster matmuls, no effect on loss
# The repository's conf/, which `lmforge-train` reads: lmforge is installed from a checkout (`pip install -e .`).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ------------------------------------------------------------------ phases


def objective_class(cfg: DictConfig) -> type[LMObjective]:
    cls = get_class(cfg.model._target_)
    if not issubclass(cls, LMObjective):
        raise ConfigError(f"model._target_={cfg.model._target_!r} is not an objective (a subclass of LMObjective).")
    return cls


def build_data(cfg: DictConfig) -> RunData:
    """The data module with its tokenizer fitted or loaded and the corpus tokenized (the objective's special
    tokens are in the vocabulary)."""
    datamodule = instantiate(cfg.data)
    datamodule.build(objective_class(cfg).special_tokens)
    return datamodule


def build_objective(
    cfg: DictConfig,
    datamodule: RunData,
    init_net: torch.nn.Module | None,
    scale_options: ScaleOptions,
    init_weights: InitWeights | None = None,
) -> LMObjective:
    """The objective and its net. A net from the config gets the tokenizer's vocabulary size (rounded up) and
    special ids, written into cfg so config.yaml shows them; a net from model.init_from must fit the tokenizer (with
    `init_weights`, a lmforge run's: the net is built from the config, which holds the source's vocabulary size)."""
    objective_cls = objective_class(cfg)
    if init_net is None:
        with open_dict(cfg):
            if init_weights is None:
                cfg.model.net.vocab_size = round_up(datamodule.vocab_size, VOCAB_MULTIPLE)
            else:
                check_vocab_fits(
                    int(cfg.model.net.vocab_size), datamodule.vocab_size, datamodule.special_ids, init_weights.init_from
                )
            cfg.model.net.update(objective_cls.net_token_ids(datamodule.special_ids))
            if "num_labels" in cfg.model.net.keys():  # a classifier: as many outputs as the training file has labels
                cfg.model.net.num_labels = len(labelled(datamodule).labels)
        # on the meta device under FSDP; same initial weights on any world size
        return build_model(cfg, seed=cfg.seed, scale_options=scale_options)
    check_vocab_fits(init_net, datamodule.vocab_size, datamodule.special_ids, cfg.model.init_from)
    return instantiate_objective(cfg.model, net=init_net, scale_options=scale_options)


def build_trainer(
    cfg: DictConfig,
    block_len: int,
    scale_options: ScaleOptions,
    extra_callbacks: list[Any] | None = None,
    net: torch.nn.Module | None = None,
) -> tuple[L.Trainer, list[Any], dict[str, Any]]:
    """The Trainer, its callbacks, and the "scale" facts of summary.json. The token budget (global_batch_size,
    max_tokens) is planned first, for the world size the Trainer will have, and written into cfg.trainer: the
    Trainer is built with the final accumulation and max_steps (and config.yaml shows them)."""
    world_size = planned_world_size(cfg.trainer)
    # the budget counts model replicas: ranks of one tensor-parallel group or one pipeline share each batch
    replicas = check_pipeline_parallel(cfg, check_tensor_parallel(cfg, world_size))
    batch_facts = plan_budget(cfg, replicas, block_len)
    if replicas != world_size:
        batch_facts.update(world_size=world_size, data_parallel_size=replicas)
    # Signals stop the run with a checkpoint whatever the callbacks config says (lmforge/callbacks/preemption.py).
    callbacks = [*_instantiate_group(cfg.get("callbacks")), *(extra_callbacks or []), Preemption()]
    loggers = _instantiate_group(cfg.get("logger"))
    # Checkpoints come only from the configured callbacks (callbacks=none means none): Lightning would
    # otherwise add its own ModelCheckpoint under the logger's folder.
    checkpointing = cfg.trainer.get(
        "enable_checkpointing", any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    )
    # Checkpoint files are replaced atomically (lmforge/checkpoint_io.py); sharded folders are written by DCP.
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=checkpointing,
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.world_size != world_size:  # the budget would be wrong: say so rather than train on it
        raise RuntimeError(f"the Trainer has {trainer.world_size} processes, the budget was planned for {world_size}")
    return trainer, callbacks, {**describe_strategy(trainer, scale_options, net), **batch_facts}


def header_summary(cfg: DictConfig, model: LMObjective, datamodule: RunData, scale: dict[str, Any]) -> dict[str, Any]:
    """summary.json as it stands before training: the facts about the run, status "failed" until fit says more."""
    facts = datamodule.summary_facts()
    model_name, overrides = _hydra_info()
    return {
        "status": "failed",
        "objective": model.name,
        "model": model_name,
        "params": model.num_parameters(),
        "steps": 0,
        "tokens": 0,
        "wall_time_s": 0.0,
        "metrics": {},
        "baseline": facts["baseline"],
        "data": facts["data"],
        "overrides": overrides,
        "scale": scale,
    }


def write_header(
    cfg: DictConfig, run_dir: Path, model: LMObjective, datamodule: RunData, trainer: L.Trainer, summary: dict
) -> None:
    """Global rank 0: the run folder's tokenizer and config.yaml, the hyperparameters for the loggers, and the
    console's account of what is about to be trained."""
    if not trainer.is_global_zero:
        return
    if datamodule.tokenizer_path is None:
        raise RuntimeError("the data module's build() made no tokenizer")
    run_dir.mkdir(parents=True, exist_ok=True)
    copy_tokenizer(datamodule.tokenizer_path, run_dir)
    if isinstance(datamodule, LabelledData):  # the classifier's output order, for whoever uses the run
        (run_dir / "labels.json").write_text(json.dumps(datamodule.labels, indent=2) + "\n")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved(cfg))
    data, scale = summary["data"], summary["scale"]
    say(
        f"{model.name} model '{summary['model']}': {summary['params'] / 1e6:.2f}M parameters, vocabulary "
        f"{datamodule.vocab_size}; corpus {data['corpus']}: {data['train_tokens']:,} "
        f"train / {data['val_tokens']:,} val tokens; unigram baseline val loss "
        f"{summary['baseline']['unigram_val_loss']:.3f}"
    )
    say(f"  parameters: {describe_parameters(model.net)}")
    say(
        f"{scale['strategy']} on {scale['world_size']} process(es), {scale['precision']}, "
        f"{scale['threads']} thread(s) each ({scale['threads_reason']}): {describe(scale)}"
    )


@dataclass
class Outcome:
    """How fit ended. `exception` is what ended it abnormally: re-raised once summary.json is written."""

    status: str = "failed"
    metrics: dict[str, float] = field(default_factory=dict)  # at the end of fit, before the final validation
    error: str | None = None
    exception: BaseException | None = None
    exit_code: int = 0  # non-zero when a signal stopped the run: the process exits with it once all is written


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Exempt what start-up built (half a million objects: Hydra, W&B, torch, Lightning's imports) from Python's
    cyclic garbage collector while training runs. Each full collection would otherwise walk them all again, ~0.15 s
    here, a pause in whichever step it lands in. What training allocates is collected as before; afterwards they
    are collectable again (a multirun's next run frees this run's objects)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def fit(cfg: DictConfig, trainer: L.Trainer, callbacks: list[Any], model: LMObjective, data: RunData) -> Outcome:
    """Train, then validate at the last step unless the run was interrupted or a callback ended it on purpose.
    Never raises: an exception (Ctrl-C included) is returned in the outcome."""
    datamodule = cast(L.LightningDataModule, data)  # RunData is what lmforge adds to a LightningDataModule
    outcome = Outcome()
    try:
        with startup_objects_frozen():
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        outcome.metrics = _final_metrics(trainer)  # validate() below resets the trainer's metrics
        stopped_as = _stopped_as(callbacks)  # a callback that ended the run on purpose names it, e.g. "pruned"
        if not trainer.interrupted and not stopped_as:  # a final validation at the last step
            trainer.validate(model, datamodule=datamodule, verbose=False)
        outcome.status = "interrupted" if trainer.interrupted else stopped_as or "completed"
        preemption = next(cb for cb in callbacks if isinstance(cb, Preemption))
        if preemption.final_status is not None:
            outcome.exit_code = preemption.exit_code
    except SIGTERMException:  # Lightning's SIGTERM handling outside training (e.g. the final validation)
        outcome.status, outcome.exit_code = "interrupted", EXIT_CODES[signal.SIGTERM]
    except SystemExit as e:  # Lightning turns Ctrl-C into SystemExit after a graceful shutdown
        outcome.status, outcome.exception = "interrupted", e
    except BaseException as e:
        outcome.error, outcome.exception = f"{type(e).__name__}: {e}", e
    return outcome


def summarize(
    header: dict[str, Any],
    outcome: Outcome,
    trainer: L.Trainer,
    callbacks: list[Any],
    model: LMObjective,
    started: float,
) -> dict[str, Any]:
    """summary.json's content: the header facts, what fit did, and the sections callbacks own."""
    summary = {**header, "status": outcome.status, "metrics": outcome.metrics}
    if outcome.error is not None:
        summary["error"] = outcome.error
    summary.update(steps=trainer.global_step, tokens=model.tokens_seen, wall_time_s=time.time() - started)
    summary["metrics"] = {**summary["metrics"], **_final_metrics(trainer)}
    summary["perf"] = {"device": str(trainer.strategy.root_device)}  # the throughput callback adds its figures
    for cb in callbacks:  # callbacks that own a summary section (samples, emissions, perf, ...)
        if isinstance(cb, SummarySection):
            section = cb.summary()
            if section:
                summary[cb.summary_key] = {**summary.get(cb.summary_key, {}), **section}
    return summary


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate as configured; return the summary written to `<run dir>/summary.json`."""
    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    check_config(cfg)  # every problem of the typed keys at once
    check_test_config(cfg)  # test=true needs a test split (data.test_fraction / data.test_path)
    # ckpt_path, or the newest checkpoint of a run this folder already holds (resume=auto); checked before compute
    resumed = plan_resume(cfg, objective_class(cfg).name)
    scale_options = ScaleOptions.from_config(cfg)
    # model.init_from: an HF folder gives the net; a lmforge run (or an HF backbone under a task head) the weights
    # that fit the chosen model. Either sets the net's dimensions and the tokenizer.
    init_net, init_weights = load_init(cfg)
    changed = check_changes(cfg, resumed) if resumed else []
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    datamodule = build_data(cfg)
    model = build_objective(cfg, datamodule, init_net, scale_options, init_weights)
    init_report = init_weights.load_into(model.net) if init_weights else None
    datamodule.set_batch_builder(
        model.batch_builder(cfg.data.seq_len, datamodule.special_ids, tokenizer=datamodule.tokenizer)
    )
    if isinstance(model, NeedsTokenizer):  # e.g. seq2seq decodes its predictions to text for BLEU
        model.bind_tokenizer(datamodule.tokenizer, datamodule.special_ids)
    if isinstance(model, NeedsLabels):  # a classifier: label names for checkpoints, counts for class weights
        data = labelled(datamodule)
        model.bind_labels(data.labels, data.train_label_counts)
    # resume_changes=allow with new optimizer values: applied to the optimizer state the checkpoint restores
    apply = [ApplyOptimizerChanges(resolved(cfg.model.optimizer))] if any("optimizer" in c for c in changed) else []
    trainer, callbacks, scale = build_trainer(
        cfg, datamodule.block_len, scale_options, extra_callbacks=apply, net=model.net
    )
    # torch's CPU threads: the cores no other work is using now (threads=auto), before fit starts any rank
    on_gpu = not isinstance(trainer.accelerator, CPUAccelerator)
    threads = choose_threads(cfg.get("threads", "auto"), on_gpu, processes_here=trainer.num_devices)
    apply_threads(threads)
    scale.update(threads.as_dict())
    try:
        check_steps_left(resumed, trainer.max_steps)
    except NothingToTrain as e:
        if not e.finished:
            raise
        say(str(e))  # the folder's run is complete: re-running its command (a requeue) is a success, not a redo
        return json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    # Checkpoints carry the resolved config as it is now: with the vocabulary, accumulation and steps filled in.
    # The budget needs the batch builder's block length, which the objective makes, so this one fact comes last.
    model.run_config = resolved(cfg)

    header = header_summary(cfg, model, datamodule, scale)
    if init_report is not None:  # what model.init_from loaded, what is new, what was left out
        header["init_from"] = init_report
        say(describe_init(init_report))
    write_header(cfg, run_dir, model, datamodule, trainer, header)
    flops = planned_flops(model.net, datamodule.block_builder, cfg, trainer, token_id=datamodule.vocab_size - 1)
    estimate = pre_run_estimate(cfg, header["params"], trainer, callbacks, flops=flops)
    if estimate:
        header["emissions"] = {"estimate": estimate}

    outcome = fit(cfg, trainer, callbacks, model, datamodule)
    # the best checkpoint scored on the test split (test=auto|true): test/* metrics and summary.json's "test"
    tested = test_after_fit(cfg, trainer, callbacks, model, datamodule, outcome, run_dir)
    if tested is not None:
        header["test"] = tested
    try:
        summary = summarize(header, outcome, trainer, callbacks, model, started)
        if trainer.is_global_zero:
            write_summary(run_dir, summary)
            _print_run_folder(run_dir, summary)
        finish_loggers(trainer.loggers, summary, run_dir)  # W&B: close the run, print `wandb sync` if offline
    finally:
        if outcome.exception is not None:  # what ended fit, not a later error about the summary
            raise outcome.exception
    if outcome.exit_code:  # stopped by a signal: schedulers must not see a success (143 for SIGTERM, ...)
        raise SystemExit(outcome.exit_code)
    return summary


# ------------------------------------------------------------------ helpers


def labelled(datamodule: RunData) -> LabelledData:
    if not isinstance(datamodule, LabelledData):
        raise ConfigError(
            "a classifier (model=bert_cls, gpt_cls, llama_cls) trains on labelled texts: use data=classification "
            "data.path=<file> or data=shakespeare_genre."
        )
    return datamodule


def _instantiate_group(group: DictConfig | None, **kwargs) -> list[Any]:
    """Instantiate each entry of a dict-of-configs group (callbacks, logger); skip null entries."""
    if not group:
        return []
    return [instantiate(c, **kwargs) for c in group.values() if c is not None and "_target_" in c]


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved: what checkpoints and loggers keep."""
    return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))


def _hydra_info() -> tuple[str, list[str]]:
    if not HydraConfig.initialized():
        return "unknown", []
    hc = HydraConfig.get()
    return hc.runtime.choices.get("model", "unknown"), list(hc.overrides.task)


def _final_metrics(trainer: L.Trainer) -> dict[str, float]:
    # perf/* are the throughput callback's: its summary() owns the "perf" section
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.startswith("perf/")}


def _stopped_as(callbacks: list[Any]) -> str | None:
    return next((cb.final_status for cb in callbacks if isinstance(cb, EndsRunOnPurpose) and cb.final_status), None)


def _print_run_folder(run_dir: Path, summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    if "val/acc" in m and "chance_acc" in summary["baseline"]:  # a classifier: accuracy against chance says more
        b = summary["baseline"]
        say(
            f"\nval/acc {m['val/acc']:.3f}, val/f1 {m.get('val/f1', float('nan')):.3f} (macro), val/loss "
            f"{m['val/loss']:.3f}; chance {b['chance_acc']:.3f}, majority label {b['majority_val_acc']:.3f}; "
            f"{summary['steps']} steps, {summary['wall_time_s']:.0f}s"
        )
    elif "val/loss" in m:
        gap = summary["baseline"]["unigram_val_loss"] - m["val/loss"]
        say(
            f"\nval/loss {m['val/loss']:.3f} (ppl {m.get('val/ppl', float('nan')):.1f}), "
            f"{abs(gap):.2f} nats {'below' if gap >= 0 else 'above'} the unigram baseline; "
            f"{summary['steps']} steps, {summary['tokens']:,} tokens, "
            f"{summary['wall_time_s']:.0f}s"
        )
    listing = [f"  {p.name}{'/' if p.is_dir() else ''}" for p in sorted(run_dir.iterdir())]
    say("\n".join([f"Run folder ({summary['status']}): {run_dir}", *listing]))


# ------------------------------------------------------------------ entry points


def train_job(cfg: DictConfig) -> dict[str, Any]:
    """One Hydra job (top-level train.py, `lmforge-train`): user mistakes end with one message and exit status 2."""
    try:
        with isolated_job():  # ranks Lightning starts run this job, in its folder (lmforge/parallel/launch.py)
            return run(cfg)
    except Exception as e:
        user_error = _find_user_error(e) or folder_error(e)  # a folder that cannot be written is the user's to fix
        if user_error is None:
            log.exception("the run failed")  # the traceback in train.log too, not only on the console
            raise
        log.error(f"error: {user_error}")
        print(f"\nerror: {user_error}", file=sys.stderr)
        sys.exit(2)


def hydra_task(cfg: DictConfig) -> float | None:
    summary = train_job(cfg)
    return summary.get("metrics", {}).get("val/loss")  # the value Hydra sweepers optimise


def main() -> None:
    """The `lmforge-train` console script: `python train.py` from any folder, with the same config and overrides."""
    if not (CONFIG_DIR / "train.yaml").is_file():
        print(
            f"error: lmforge-train reads the config in the repository's conf/ ({CONFIG_DIR}), which is not there: "
            "install lmforge from a checkout (`pip install -e .`), or run `python train.py` in one.",
            file=sys.stderr,
        )
        sys.exit(2)
    # Hydra names the job after this module ("train"), so the log file is train.log, as with train.py.
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(hydra_task)()


def _find_user_error(e: BaseException | None) -> LmforgeError | None:
    """Hydra's instantiate wraps constructor errors; look through the chain for ours."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, LmforgeError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":  # python -m lmforge.train
    main()
