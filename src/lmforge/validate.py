"""Fail before compute: check the user-typed config keys and say what would be accepted.

Each check names the key, the bad value and the accepted range, and raises ConfigError,
which train.py prints without a traceback.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import ConfigError


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
    _positive_key(cfg, "model.optimizer.lr")
    _positive_key(cfg, "data.batch_size", integer=True, required=True)
    _positive_key(cfg, "data.seq_len", integer=True, required=True)
    _positive_key(cfg, "trainer.accumulate_grad_batches", integer=True)
    max_steps = _get(cfg, "trainer.max_steps")
    max_epochs = _get(cfg, "trainer.max_epochs")
    if max_steps is not None and max_steps != -1:
        _positive_key(cfg, "trainer.max_steps", integer=True)
    elif max_epochs is None or max_epochs <= 0:
        raise ConfigError(
            f"trainer.max_steps={max_steps}: set a positive number of optimizer steps "
            "(or trainer.max_epochs to a positive number of epochs)."
        )
    warmup = _get(cfg, "model.scheduler.warmup_steps")
    if warmup is not None and warmup < 0:
        raise ConfigError(f"model.scheduler.warmup_steps={warmup} must be >= 0.")
    wd = _get(cfg, "model.optimizer.weight_decay")
    if wd is not None and wd < 0:
        raise ConfigError(f"model.optimizer.weight_decay={wd} must be >= 0.")
    check_context(cfg)


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
