"""Fail before compute: check the user-typed config keys and say what would be accepted.

Each check names the key, the bad value and the accepted range, and raises ConfigError,
which train.py prints without a traceback.
"""

from __future__ import annotations

from omegaconf import DictConfig

from lmforge.errors import ConfigError


def _get(cfg: DictConfig, key: str, default=None):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=default)


def _positive(cfg: DictConfig, key: str, kind=float, allow_missing: bool = True) -> None:
    value = _get(cfg, key)
    if value is None:
        if allow_missing:
            return
        raise ConfigError(f"{key} is not set; give it a positive {kind.__name__}.")
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise ConfigError(f"{key}={value!r} must be a positive {kind.__name__}.")
    if value <= 0:
        raise ConfigError(f"{key}={value} must be a positive {kind.__name__} (> 0).")


def check_config(cfg: DictConfig) -> None:
    _positive(cfg, "model.optimizer.lr")
    _positive(cfg, "data.batch_size", int, allow_missing=False)
    _positive(cfg, "data.seq_len", int, allow_missing=False)
    _positive(cfg, "trainer.accumulate_grad_batches", int)
    max_steps = _get(cfg, "trainer.max_steps")
    max_epochs = _get(cfg, "trainer.max_epochs")
    if max_steps is not None and max_steps != -1:
        _positive(cfg, "trainer.max_steps", int)
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
