"""Fail before compute: check the user-typed config keys and say what would be accepted.

Each check names the key, the bad value and the accepted range, and raises ConfigError,
which train.py prints without a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import ConfigError
from lmforge.threads import check_threads_setting


def positive(
    key: str,
    value: Any,
    *,
    integer: bool = False,
    allow_zero: bool = False,
    error: type[Exception] = ConfigError,
    unset_hint: str = "",
) -> Any:
    """`value` if it is a finite number > 0 (>= 0 with `allow_zero`; a whole number with `integer`, returned as an
    int), None if it is unset; else `error` with a message naming the key, the value and what is accepted. The one
    check behind every "must be positive" of the config (here, lmforge.budget) and of the emissions estimator."""
    if value is None:
        return None
    kind = ("non-negative " if allow_zero else "positive ") + ("integer" if integer else "number")
    bound = ">= 0" if allow_zero else "> 0"
    try:  # strings and bools are not numbers here even where float() would take them
        number = float(value) if not isinstance(value, (str, bool)) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise error(f"{key}={value!r} must be a {kind}{unset_hint}.")
    if number < 0 or (number == 0 and not allow_zero):
        raise error(f"{key}={value!r} must be a {kind} ({bound}){unset_hint}.")
    return int(number) if integer else value


def _get(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def _positive_key(cfg: DictConfig, key: str, integer: bool = False, required: bool = False) -> None:
    if required and _get(cfg, key) is None:
        raise ConfigError(f"{key} is not set; give it a positive {'integer' if integer else 'number'}.")
    positive(key, _get(cfg, key), integer=integer)


def check_config(cfg: DictConfig) -> None:
    """Every check of the user-typed keys, before anything is built. All problems are reported together (one
    ConfigError, a line each), so a user fixes a command once, not once per mistake."""
    from lmforge.budget import check_budget_config  # budget uses `positive` from here

    checks: list[Callable[[DictConfig], Any]] = [
        check_seed,
        check_flags,
        partial(_positive_key, key="model.optimizer.lr"),
        partial(_positive_key, key="data.batch_size", integer=True, required=True),
        partial(_positive_key, key="data.seq_len", integer=True, required=True),
        partial(_positive_key, key="trainer.accumulate_grad_batches", integer=True),
        check_duration,
        partial(_non_negative_key, key="model.scheduler.warmup_steps"),
        partial(_non_negative_key, key="model.optimizer.weight_decay"),
        check_budget_config,
        check_scale_options,
        lambda c: check_threads_setting(_get(c, "threads", "auto")),
        check_context,
        check_monitors,
    ]
    problems: list[str] = []
    for check in checks:
        try:
            check(cfg)
        except ConfigError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in the config:\n  - " + "\n  - ".join(problems))


def _valid_seed(seed: Any) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32


def check_seed(cfg: DictConfig) -> None:
    seed = _get(cfg, "seed")
    if not _valid_seed(seed):
        raise ConfigError(f"seed={seed!r} must be a whole number from 0 to 2**32 - 1 (e.g. seed=1337).")


def check_scale_options(cfg: DictConfig) -> None:
    """compile and activation_checkpointing (ScaleOptions also takes the run's seed, which check_seed checks)."""
    from lmforge.parallel.wrap import ScaleOptions

    checked = cfg if _valid_seed(_get(cfg, "seed")) else OmegaConf.merge(cfg, {"seed": 0})
    ScaleOptions.from_config(cast(DictConfig, checked))


def check_flags(cfg: DictConfig) -> None:
    """train.yaml's switches: a typo such as print_config=yes would otherwise count as true."""
    for key in ("print_config",):
        value = _get(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false.")


def check_duration(cfg: DictConfig) -> None:
    max_steps = _get(cfg, "trainer.max_steps")
    max_epochs = _get(cfg, "trainer.max_epochs")
    if max_steps is not None and max_steps != -1:
        _positive_key(cfg, "trainer.max_steps", integer=True)
    elif max_epochs is None or max_epochs <= 0:
        raise ConfigError(
            f"trainer.max_steps={max_steps}: set a positive number of optimizer steps "
            "(or trainer.max_epochs to a positive number of epochs)."
        )


def _non_negative_key(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
        raise ConfigError(f"{key}={value!r} must be >= 0.")


def check_monitors(cfg: DictConfig) -> None:
    """A callback's `monitor` (best.ckpt's val/loss, early stopping, sweep pruning) must be a metric the objective
    logs: Lightning would find a typo only after the first validation's compute."""
    from hydra.utils import get_class

    target = _get(cfg, "model._target_")
    try:
        logged = getattr(get_class(target), "logged_metrics", None) if target else None
    except (ImportError, AttributeError, ValueError):
        return  # objective_class() names a wrong _target_
    if not logged:
        return
    callbacks = _get(cfg, "callbacks") or {}
    wrong = [
        f"callbacks.{name}.monitor={node.get('monitor')!r}"
        for name, node in callbacks.items()
        if isinstance(node, DictConfig) and node.get("monitor") and node.get("monitor") not in logged
    ]
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)}: the {target.rsplit('.', 1)[-1]} objective logs no such metric; it logs "
            f"{', '.join(logged)}."
        )


def check_context(cfg: DictConfig) -> None:
    """The packed sequence length (and for pairs, the target length) must fit the model's positions."""
    context = _get(cfg, "model.net.max_seq_len")
    for key in ("data.seq_len", "data.max_target_len"):
        length = _get(cfg, key)
        if context is not None and length is not None and length > context:
            raise ConfigError(
                f"{key}={length} is longer than the model's context model.net.max_seq_len={context}. "
                f"Use {key}<={context}, or raise model.net.max_seq_len (a model with learned positions "
                "then needs training from scratch)."
            )
