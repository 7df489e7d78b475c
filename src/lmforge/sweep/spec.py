"""What a sweep is, read once from the composed `conf/sweep.yaml` and checked before any trial runs.

sweep.yaml composes the whole train config, so the command-line overrides a user gives sweep.py are
checked against the real config (a typo stops here, not in every trial). Every override that is
not about the sweep itself (`hparams_search=`, `sweep.*`, `hydra.*`) goes to every trial.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import ConfigError
from lmforge.sweep.space import Param, parse_space
from lmforge.validate import check_config

Direction = Literal["minimize", "maximize"]
Choice = TypeVar("Choice", bound=str)

BACKENDS = ("optuna", "grid", "wandb")
DIRECTIONS: tuple[Direction, ...] = ("minimize", "maximize")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SPEC_FILE = "sweep.json"  # the sweep's identity, written on first start, compared on every re-run


def _key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def is_sweep_override(override: str) -> bool:
    """Overrides that configure sweep.py itself rather than the trials."""
    key = _key_of(override)
    if key == "hydra.searchpath":  # trials need the same config search path
        return False
    return key in ("hparams_search", "sweep") or key.startswith(("sweep.", "hydra.", "hydra/")) or key == "hydra"


@dataclass
class SweepSpec:
    name: str
    dir: Path
    backend: str
    metric: str
    direction: Direction
    n_trials: int | None
    n_jobs: int
    seed: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    space: list[Param]
    trial_overrides: list[str]  # sweep.overrides, then the command line's: given to every trial
    train_script: Path
    config_dirs: list[str] = field(default_factory=list)  # --config-dir given to sweep.py, passed on
    groups: list[str] = field(default_factory=list)  # config groups of the train config (model, data, ...)
    optional_groups: list[str] = field(default_factory=list)  # groups train.yaml leaves null (experiment, debug)
    concurrent_overrides: list[str] = field(default_factory=list)  # added to trials that share this machine
    launcher: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] = field(default_factory=dict)
    report: bool = True

    @property
    def pruning(self) -> bool:
        return self.pruner.get("name", "none") != "none" and self.backend != "wandb"

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same sweep; n_trials, n_jobs, launcher and report may change."""
        return {
            "name": self.name,
            "backend": self.backend,
            "metric": self.metric,
            "direction": self.direction,
            "space": {p.key: p.describe() for p in self.space},
            "trial_overrides": self.trial_overrides,
        }

    def train_command(self, overrides: list[str]) -> list[str]:
        """`python train.py ...` for the given trial overrides (after the shared ones)."""
        cmd = ["python", str(self.train_script)]
        for d in self.config_dirs:
            cmd += ["--config-dir", d]
        return cmd + self.trial_overrides + list(overrides)


def as_dict(node: Any, key: str, *, resolve: bool = True) -> dict[str, Any]:
    """The config mapping at `key` (sweep.sampler, sweep.launcher, ...) as a plain dict; {} where it is unset."""
    if node is None:
        return {}
    value = OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r}: give a mapping (key: value, ...).")
    return {str(k): v for k, v in value.items()}


def _choice(cfg: DictConfig, key: str, accepted: tuple[Choice, ...]) -> Choice:
    value = OmegaConf.select(cfg, key)
    if value not in accepted:
        raise ConfigError(f"{key}={value!r}: choose one of {', '.join(accepted)}.")
    return value


def _optional_groups(hydra_cfg: Any) -> list[str]:
    """Groups train.yaml's defaults list leaves null (experiment, debug): an experiment config includes
    them (`- /debug/fast`) rather than overriding them, since they come after it in that list."""
    main = next((s.path for s in hydra_cfg.runtime.config_sources if s.provider == "main"), None)
    path = Path(main.removeprefix("file://")) / "train.yaml" if main else None
    if path is None or not path.exists():
        return ["debug", "experiment"]
    train = OmegaConf.load(path)
    defaults = train.get("defaults", []) if isinstance(train, DictConfig) else []
    return sorted(str(k) for d in defaults if isinstance(d, DictConfig) for k, v in d.items() if v is None)


def _concurrent_overrides(cfg: DictConfig, given: list[str]) -> list[str]:
    """CodeCarbon's default machine mode counts the whole machine: trials running side by side here
    would each be charged for all of them, so they measure their own process instead."""
    key = "callbacks.emissions.tracking_mode"
    if OmegaConf.select(cfg, "callbacks.emissions") is None or any(_key_of(o) == key for o in given):
        return []
    return [f"{key}=process"]


def build_spec(cfg: DictConfig, hydra_cfg: Any, train_script: Path) -> SweepSpec:
    """SweepSpec from sweep.py's composed config and its HydraConfig (overrides, choices, search path)."""
    s = cfg.sweep
    name = str(s.name or "")
    if not name or "/" in name:
        raise ConfigError(
            f"sweep.name={s.name!r}: give a non-empty name without '/' (it names the sweep folder and the W&B group)."
        )
    backend = _choice(cfg, "sweep.backend", BACKENDS)
    n_trials = s.n_trials
    if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 1):
        raise ConfigError(f"sweep.n_trials={n_trials!r} must be a positive int (or null: the whole grid).")
    if n_trials is None and backend != "grid":
        raise ConfigError("sweep.n_trials=null is only for sweep.backend=grid (the whole grid); give a number.")
    if not isinstance(s.n_jobs, int) or s.n_jobs < 1:
        raise ConfigError(f"sweep.n_jobs={s.n_jobs!r} must be a positive int (trials run at once).")
    sampler = as_dict(s.sampler, "sweep.sampler")
    pruner = as_dict(s.pruner, "sweep.pruner")
    if backend == "optuna":
        _choice(cfg, "sweep.sampler.name", SAMPLERS)
    _choice(cfg, "sweep.pruner.name", PRUNERS)

    groups = {g for g in hydra_cfg.runtime.choices if not g.startswith("hydra/")} - {"hparams_search"}
    space = parse_space(s.params, cfg, groups)
    if not any(p.is_group for p in space):  # the shared part of every trial's config: check it once, here
        check_config(cfg)  # (with a group searched, trials differ too much to check here)
    cli = [o for o in hydra_cfg.overrides.task if not is_sweep_override(o)]
    cli_keys = {_key_of(o) for o in cli}
    fixed = [str(o) for o in (s.overrides or []) if _key_of(str(o)) not in cli_keys]  # the command line wins
    searched = {p.key.lstrip("+") for p in space}
    for o in fixed + cli:
        if _key_of(o) in searched:
            raise ConfigError(f"override '{o}' sets a key that sweep.params searches; remove one of them.")
    config_dirs = [
        src.path.removeprefix("file://")
        for src in hydra_cfg.runtime.config_sources
        if src.provider == "command-line" and src.schema == "file"
    ]
    return SweepSpec(
        name=name,
        dir=Path(str(s.dir)).absolute(),
        backend=backend,
        metric=str(s.metric),
        direction=_choice(cfg, "sweep.direction", DIRECTIONS),
        n_trials=n_trials,
        n_jobs=int(s.n_jobs),
        seed=int(s.seed),
        sampler=sampler,
        pruner=pruner,
        space=space,
        trial_overrides=fixed + cli,
        train_script=train_script,
        config_dirs=config_dirs,
        groups=sorted(groups),
        optional_groups=_optional_groups(hydra_cfg),
        concurrent_overrides=_concurrent_overrides(cfg, fixed + cli),
        launcher=as_dict(s.get("launcher"), "sweep.launcher"),
        wandb=as_dict(s.get("wandb"), "sweep.wandb"),
        report=bool(s.report),
    )


def check_same_sweep(spec: SweepSpec) -> None:
    """A sweep folder belongs to one command: re-running it resumes; a different one must not mix in."""
    path = spec.dir / SPEC_FILE
    mine = spec.identity()
    if path.exists():
        theirs = json.loads(path.read_text())
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            detail = "; ".join(f"{k}: was {theirs.get(k)!r}, now {mine[k]!r}" for k in diff)
            raise ConfigError(
                f"{spec.dir} holds a different sweep ({detail}). Re-run the original command to "
                f"resume it, or give this one its own folder: sweep.name=<new name> (or sweep.dir=...)."
            )
        return
    spec.dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1) + "\n")


def spec_dict(spec: SweepSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["dir"], d["train_script"] = str(spec.dir), str(spec.train_script)
    d["space"] = {p.key: p.describe() for p in spec.space}
    return d
