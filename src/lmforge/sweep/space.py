"""The search space: `sweep.params` entries written in Hydra's own sweep grammar.

    model.optimizer.lr: tag(log, interval(1e-4, 1e-2))   # float, log scale
    model.optimizer.weight_decay: interval(0.0, 0.2)     # float, linear
    model.scheduler.warmup_steps: int(interval(0, 200))  # int (tag(log, int(interval(...))) for log)
    data.batch_size: choice(16, 32, 64)                  # categorical
    model.net.n_layer: range(2, 8, 2)                    # ints 2, 4, 6 (stop excluded, as in Python)
    model: choice(gpt_tiny, gpt)                         # a whole config-group choice

The grammar is the one `train.py -m` and hydra-optuna-sweeper use, parsed by Hydra itself, so a
space reads the same everywhere. A sampled value goes back to the trial as a plain override
(`model.optimizer.lr=0.00123`, `model=gpt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, QuotedString, RangeSweep, Sweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lmforge.errors import ConfigError

GRAMMAR = (
    "choice(a, b, ...), range(start, stop[, step]), interval(low, high), int(interval(low, high)), "
    "tag(log, interval(low, high))"
)

Value = Any  # None | bool | int | float | str


@dataclass(frozen=True)
class Param:
    """One searched key. kind: 'float' | 'int' (low/high inclusive, maybe log, maybe step) or 'choice'."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Value, ...] = field(default_factory=tuple)
    is_group: bool = False  # a config-group choice (model=gpt) rather than a value (model.net.n_layer=4)

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of an 'int' or 'float' parameter, both inclusive."""
        if self.low is None or self.high is None:
            raise ConfigError(f"sweep.params.{self.key} is a choice; it has no low and high.")
        return self.low, self.high

    def grid(self) -> list[Value]:
        """The values a grid visits; continuous intervals have none."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None:
            raise ConfigError(
                f"sweep.params.{self.key} is a continuous interval; a grid needs a finite set: "
                f"use choice(...) or range(start, stop, step)."
            )
        low, high = self.bounds
        n = int(math.floor((high - low) / self.step + 1e-9)) + 1
        values = [low + i * self.step for i in range(n)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "choice":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        if self.is_group:
            d["group"] = True
        return d


def _plain(v: Any) -> Value:
    if isinstance(v, QuotedString):
        return v.text
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigError(f"choice values must be numbers, strings, booleans or null, not {v!r}.")


def parse_param(key: str, expr: Any, groups: set[str] | frozenset[str] = frozenset()) -> Param:
    """One `sweep.params` entry -> Param. A non-sweep value (a plain number/string) is an error: put it
    in `sweep.overrides` (or on the command line) instead, where it reaches every trial."""
    where = f"sweep.params.{key}={expr!r}"
    if not isinstance(expr, str):
        raise ConfigError(f"{where}: write the range as a string in Hydra's sweep grammar: {GRAMMAR}.")
    try:
        override = OverridesParser.create().parse_overrides([f"{key}={expr}"])[0]
    except HydraException as e:
        raise ConfigError(f"{where} does not parse ({e}); accepted: {GRAMMAR}.") from None
    if not override.is_sweep_override():
        raise ConfigError(
            f"{where} is a single value, not a range; searched keys need {GRAMMAR}. "
            "A value for every trial goes in sweep.overrides or on the command line."
        )
    sweep = override.value()
    assert isinstance(sweep, Sweep)  # is_sweep_override()
    log = "log" in sweep.tags
    is_group = key in groups
    if isinstance(sweep, ChoiceSweep):
        choices = tuple(_plain(v) for v in sweep.list)
        if not choices:
            raise ConfigError(f"{where}: choice() needs at least one value.")
        return Param(key, "choice", choices=choices, is_group=is_group)
    if is_group:
        raise ConfigError(f"{where}: '{key}' is a config group; search its options with choice(a, b, ...).")
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ConfigError(f"{where}: the range is empty (stop is excluded, as in Python's range).")
        is_int = all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step))
        return Param(key, "int" if is_int else "float", low=values[0], high=values[-1], step=sweep.step, log=log)
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        assert low is not None and high is not None  # the grammar's interval() takes exactly two numbers
        if not low < high:
            raise ConfigError(f"{where}: interval(low, high) needs low < high.")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log-scale interval needs low > 0.")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        return Param(key, kind, low=low, high=high, log=log)
    raise ConfigError(f"{where}: unsupported sweep; accepted: {GRAMMAR}.")  # pragma: no cover


def _flatten(items: dict, prefix: str = "") -> dict[str, Any]:
    """{"model.optimizer.lr": ...} as written in YAML, or nested as a command-line override makes it
    (`sweep.params.model.optimizer.lr=...`): both become dotted keys."""
    flat: dict[str, Any] = {}
    for k, v in items.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def parse_space(
    params: DictConfig | dict | None, cfg: DictConfig | None = None, groups: set[str] | frozenset[str] = frozenset()
) -> list[Param]:
    """All `sweep.params`; with `cfg` (the composed train config), check that each key exists, so a typo
    stops the sweep before the first trial rather than failing every trial."""
    if not params:
        raise ConfigError(
            "sweep.params is empty: an hparams_search config names the keys to search, e.g. "
            "sweep.params: {model.optimizer.lr: 'tag(log, interval(1e-4, 1e-2))'}."
        )
    items = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params)
    assert isinstance(items, dict)  # a DictConfig's container is a dict
    space = [parse_param(k, v, groups) for k, v in _flatten(items).items()]
    if cfg is not None:
        for p in space:
            key = p.key.lstrip("+")
            if p.key.startswith("+") or p.is_group:
                continue
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(
                    f"sweep.params.{p.key}: no key '{key}' in the train config; check the spelling "
                    f"(or write '+{key}' to add a new key)."
                )
    return space


def format_value(value: Value) -> str:
    """A value as Hydra reads it back unchanged on the command line (quoted only where needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    try:
        back = OverridesParser.create().parse_overrides([f"k={text}"])[0].value()
        if back == text and isinstance(back, str):
            return text
    except HydraException:
        pass
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_override(key: str, value: Value) -> str:
    return f"{key}={format_value(value)}"
