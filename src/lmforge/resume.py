"""Continue a run where it stopped, in its own folder (`resume`, train.yaml).

  resume=auto   (default) a run folder that already holds a run continues from its newest readable checkpoint, in
                the same folder, the same W&B run and the same emissions totals: a fixed `hydra.run.dir` re-run,
                a SLURM requeue, a torchrun restart, a multirun re-run into the same sweep folder. A folder with
                nothing in it starts afresh. Hydra's default run folders are new for every command, so there auto
                looks at the runs beside the new one: an earlier run of the same command that stopped unfinished is
                named, with the command that continues it.
  resume=true   as auto, but a folder with nothing to continue is an error.
  resume=false  never continue: a folder that already holds a run is an error rather than overwritten.
  ckpt_path=... resumes that checkpoint, whatever `resume` says.

A checkpoint restores the weights, the optimizer state (with its learning rates), the schedule's position and the
data order. A change to the keys that decide those would be silently ignored (a new learning rate) or would change
the run under its weights (another corpus or tokenizer), so it stops the run naming each key; with
`resume_changes=allow` the run continues, and new optimizer values are applied to the restored optimizer. Growing
trainer.max_steps (or max_tokens) is how a run is extended and is always allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.callbacks.checkpoints import LAST, step_of
from lmforge.checkpoints import check_resume_checkpoint
from lmforge.console import say
from lmforge.errors import ConfigError

MODES = ("auto", True, False)
CHANGES = ("refuse", "allow")
# What a restored state decides, by config subtree. Other keys (batch size, workers, precision, logging, the number
# of steps) may change between sessions.
RESTORED = ("model.optimizer", "model.scheduler", "data", "tokenizer", "seed")
OPERATIONAL_DATA_KEYS = ("batch_size", "val_batch_size", "num_workers", "pin_memory", "cache_dir", "tokenizer")
# Files a run writes into its folder before training (write_header): their presence means the folder holds a run.
RUN_MARKERS = ("config.yaml", "summary.json", "checkpoints")


def plan_resume(cfg: DictConfig, objective: str) -> dict[str, Any] | None:
    """Decide `cfg.ckpt_path` from `resume` and the run folder; check the checkpoint. Returns the checkpoint's
    facts (`path`, `step`, `config`, `auto`) when the run resumes one, else None."""
    mode = cfg.get("resume", "auto")
    if mode not in MODES:
        raise ConfigError(f"resume={mode!r}: choose auto, true or false.")
    changes = cfg.get("resume_changes", "refuse")
    if changes not in CHANGES:
        raise ConfigError(f"resume_changes={changes!r}: choose refuse or allow.")
    run_dir = Path(cfg.paths.output_dir)
    net = _plain(cfg.model.net)
    if cfg.get("ckpt_path"):  # a wrong checkpoint is one message now, not a traceback after the data is built
        facts = check_resume_checkpoint(cfg.ckpt_path, objective, net)
        check_layout(cfg, Path(cfg.ckpt_path), "ckpt_path=" + repr(str(cfg.ckpt_path)))
        return {"path": Path(cfg.ckpt_path), "auto": False, **facts}
    if not holds_a_run(run_dir):
        if mode is True:
            raise ConfigError(
                f"resume=true: the run folder {run_dir} holds no run to continue. Point hydra.run.dir at the folder "
                "of the run, or give ckpt_path=<run dir>/checkpoints/last.ckpt."
            )
        _name_unfinished_sibling(run_dir)
        return None
    previous = _previous_summary(run_dir)
    if mode is False:
        raise ConfigError(
            f"resume=false, but the run folder {run_dir} already holds a run ({_describe(previous)}), which this "
            "one would overwrite. Choose another hydra.run.dir, or resume=auto to continue it."
        )
    found = newest_checkpoint(run_dir / "checkpoints", objective, net)
    if found is None:
        say(f"The run folder {run_dir} holds a run ({_describe(previous)}) but no readable checkpoint: starting over.")
        version_csv_log(run_dir)
        return None
    path, facts = found
    check_layout(cfg, path, f"checkpoints/{path.name} (the newest checkpoint of the run in {run_dir})")
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
    say(f"Resuming the run in {run_dir} from checkpoints/{path.name} (step {facts['step']}; {_describe(previous)}).")
    return {"path": path, "auto": True, **facts}


def check_layout(cfg: DictConfig, path: Path, named: str) -> None:
    """A sharded checkpoint folder (trainer=fsdp or tp: torch distributed checkpoint, one shard per rank) resumes
    only under the FSDP strategy, which reshards it on load onto any mesh (FSDP or TP, any number of processes).
    Lightning's other strategies read one file: they would fail on the folder after the data is built."""
    if path.expanduser().is_dir() and _uses_fsdp_strategy(cfg):
        _check_pipeline_layout(cfg, path.expanduser(), named)
    if not path.expanduser().is_dir() or _uses_fsdp_strategy(cfg):
        return
    raise ConfigError(
        f"{named} is a sharded checkpoint folder (torch distributed checkpoint, written by trainer=fsdp or "
        f"trainer=tp), which this run's strategy cannot read. Resume it with trainer=fsdp or trainer=tp, on any "
        f"number of processes (trainer=fsdp trainer.devices=1 for one). For one process or DDP, consolidate it "
        f"first: python -m lmforge.parallel.checkpoint {path} (writes a resumable file beside it), then resume "
        "that file with ckpt_path=<that file>."
    )


def _check_pipeline_layout(cfg: DictConfig, path: Path, named: str) -> None:
    """A trainer=pp folder keeps its optimizer state flattened by parameter name, FSDP's and TP's nested by group:
    each reads only its own. Told apart by the run config the folder's meta.pt records."""
    from hydra.utils import get_class

    from lmforge.checkpoints import SHARDED_META
    from lmforge.parallel.pipeline import PipelineStrategy, _strategy_is_pipeline

    if not (path / SHARDED_META).is_file():
        return
    meta = torch.load(path / SHARDED_META, weights_only=False, map_location="cpu").get("lmforge") or {}
    target = (((meta.get("config") or {}).get("trainer") or {}).get("strategy") or {}).get("_target_")
    if not isinstance(target, str):
        return
    try:
        written_by_pp = issubclass(get_class(target), PipelineStrategy)
    except Exception:  # a strategy that no longer imports: leave it to the load
        return
    if written_by_pp == _strategy_is_pipeline(cfg.trainer.get("strategy")):
        return
    if written_by_pp:
        raise ConfigError(
            f"{named} was written by trainer=pp (optimizer state flattened by parameter name), which this run's "
            f"strategy does not read. Resume it with trainer=pp, or consolidate it first (python -m "
            f"lmforge.parallel.checkpoint {path}) and resume that file on one process or under trainer=ddp."
        )
    raise ConfigError(
        f"{named} was written by trainer=fsdp or trainer=tp (optimizer state nested by group), which trainer=pp does "
        "not read. Resume it with trainer=fsdp or trainer=tp."
    )


def _uses_fsdp_strategy(cfg: DictConfig) -> bool:
    from hydra.utils import get_class

    from lmforge.parallel.fsdp import FSDP2Strategy
    from lmforge.parallel.pipeline import PipelineStrategy

    strategy = cfg.trainer.get("strategy")
    if not isinstance(strategy, DictConfig) or "_target_" not in strategy:
        return False
    try:  # trainer=fsdp, trainer=tp, trainer=pp: torch distributed checkpoints
        return issubclass(get_class(str(strategy._target_)), FSDP2Strategy | PipelineStrategy)
    except Exception:  # a strategy that does not import is the Trainer's own error to report
        return False


def holds_a_run(run_dir: Path) -> bool:
    """Hydra makes the folder (with .hydra/ and train.log) before the job starts: a run is what lmforge wrote."""
    return any((run_dir / name).exists() for name in RUN_MARKERS)


def newest_checkpoint(folder: Path, objective: str, net: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint with the highest step among last.ckpt, step-<N>.ckpt and best.ckpt; a truncated or
    corrupt one (a kill mid-save on a filesystem without atomic rename) is passed over with a message."""
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.iterdir() if p.name.endswith(".ckpt") and ".tmp-" not in p.name),
        key=lambda p: (step_of(p) or -1, p.name == LAST),
        reverse=True,
    )
    best: tuple[Path, dict[str, Any]] | None = None
    for path in candidates:
        try:
            facts = check_resume_checkpoint(path, objective, net)
        except ConfigError as e:
            say(f"  passing over {path.name}: {e}")
            continue
        step = facts["step"] if facts["step"] is not None else step_of(path) or 0
        if best is None or step > best[1]["step"] or (step == best[1]["step"] and path.name == LAST):
            best = (path, {**facts, "step": step})
    return best


def check_changes(cfg: DictConfig, resumed: dict[str, Any]) -> list[str]:
    """The RESTORED keys whose value differs from the checkpoint's run config: a ConfigError naming them, or (with
    resume_changes=allow) the list of them, said on the console."""
    stored = resumed.get("config")
    if not stored:
        return []
    now = _plain(cfg)
    changed = [
        f"{key}: {_show(before)} -> {_show(after)}"
        for prefix in RESTORED
        for key, before, after in _differences(prefix, _select(stored, prefix), _select(now, prefix))
    ]
    if not changed:
        return []
    listing = "\n  - ".join(changed)
    if cfg.get("resume_changes", "refuse") != "allow":
        raise ConfigError(
            f"ckpt_path={str(resumed['path'])!r} was trained with other values of keys its restored state decides:\n"
            f"  - {listing}\nResume with the checkpoint's values, start a new run from its weights "
            "(model.init_from=<checkpoint>), or continue with the new values: resume_changes=allow."
        )
    say(f"Resuming with changed settings (resume_changes=allow):\n  - {listing}")
    return changed


def check_steps_left(resumed: dict[str, Any] | None, max_steps: int | None) -> None:
    """A checkpoint already at trainer.max_steps leaves nothing to train: say so, rather than "completed after 0
    steps" over the finished run's summary."""
    if not resumed or resumed.get("step") is None or not max_steps or max_steps < 0:
        return
    step = int(resumed["step"])
    if step >= max_steps:
        raise NothingToTrain(
            f"{'The run in this folder' if resumed['auto'] else 'ckpt_path=' + repr(str(resumed['path']))} is at "
            f"step {step}, and trainer.max_steps={max_steps}: nothing to train. Raise trainer.max_steps (e.g. "
            f"trainer.max_steps={2 * step}) to train it further.",
            finished=bool(resumed["auto"]),
        )


class NothingToTrain(ConfigError):
    """A resume with no steps left. `finished`: the run folder's own run (resume=auto), which is a success."""

    def __init__(self, message: str, finished: bool):
        super().__init__(message)
        self.finished = finished


class ApplyOptimizerChanges(L.Callback):
    """resume_changes=allow: the optimizer state restored from the checkpoint carries the old learning rate and
    hyperparameters; set the configured ones (the schedule scales from the new peak learning rate)."""

    def __init__(self, optimizer_cfg: dict[str, Any]):
        self.values = {k: v for k, v in optimizer_cfg.items() if not k.startswith("_")}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for key, value in self.values.items():
                    if key not in group or (key == "weight_decay" and group[key] == 0.0):
                        continue  # the no-decay group (biases, norm gains) stays at 0
                    group[key] = tuple(value) if isinstance(value, list) else value
                if "lr" in self.values:
                    group["initial_lr"] = self.values["lr"]
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if "lr" in self.values and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [self.values["lr"] for _ in scheduler.base_lrs]


def version_csv_log(run_dir: Path) -> None:
    """Starting over in a folder keeps the earlier metrics: csv/metrics.csv becomes csv/metrics.<k>.csv (Lightning's
    CSV logger would delete it)."""
    log = run_dir / "csv" / "metrics.csv"
    if log.is_file():
        k = 1
        while (log.parent / f"metrics.{k}.csv").exists():
            k += 1
        log.rename(log.parent / f"metrics.{k}.csv")


# ------------------------------------------------------------------ helpers


def _plain(node: DictConfig) -> dict[str, Any]:
    return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))


def _previous_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _describe(summary: dict[str, Any]) -> str:
    if not summary:
        return "no summary.json: it stopped before writing one"
    return f"{summary.get('status', 'unknown')} after {summary.get('steps', '?')} steps"


def _name_unfinished_sibling(run_dir: Path) -> None:
    """An earlier run of this command (same overrides) beside the new folder that stopped with a checkpoint."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not run_dir.parent.is_dir():
        return
    overrides = list(HydraConfig.get().overrides.task)
    earlier = []
    for folder in run_dir.parent.iterdir():
        if folder == run_dir or not (folder / "checkpoints" / LAST).exists():
            continue
        summary = _previous_summary(folder)
        if summary.get("status") in ("interrupted", "failed") and summary.get("overrides") == overrides:
            earlier.append(folder)
    if earlier:
        last = max(earlier, key=lambda f: f.name)
        say(
            f"An earlier run of this command stopped unfinished ({_describe(_previous_summary(last))}): {last}\n"
            f"  to continue it instead: python train.py {' '.join(overrides)} hydra.run.dir={last}"
        )


def _select(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    if dotted == "data" and isinstance(tree, dict):
        return {k: v for k, v in tree.items() if k not in OPERATIONAL_DATA_KEYS}
    return tree


def _differences(prefix: str, before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            d
            for key in sorted(set(before) | set(after))
            for d in _differences(f"{prefix}.{key}", before.get(key), after.get(key))
        ]
    return [] if before == after else [(prefix, before, after)]


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)
