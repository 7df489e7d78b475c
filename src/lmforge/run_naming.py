"""Names for runs in trackers: what the command line changed, and which multirun a run belongs to.

`python train.py model=gpt_tiny model.optimizer.lr=1e-3 model.net.n_layer=2` is named
"model=gpt_tiny lr=1e-3": `n_layer=2` is gpt_tiny's default, so it says nothing. Overrides are
compared with the default config (Hydra's compose API, with the same group choices), so a name
never lists a value the run would have had anyway. Keys are shortened to their last part where
that is unambiguous, paths to their last component: W&B refuses names over 128 characters.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Where a run writes or reports does not change what it learns: such overrides stay out of names.
UNNAMED = (
    "hydra",
    "paths",
    "logger",
    "callbacks",
    "ckpt_path",
    "task_name",
    "print_config",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)
MAX_NAME = 128


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_named(key: str) -> bool:
    key = key.lstrip("+~")
    return not any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in UNNAMED)


def _short(value: str) -> str:
    return Path(value).name if "/" in value else value  # paths by their last part


def differing_overrides(overrides: list[str], choices: dict[str, str | None], config_name: str) -> list[str]:
    """The overrides (as typed) whose value differs from the default composition."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    typed = {id(o): line for o, line in zip(parsed, overrides)}  # each override as the user wrote it
    groups = [o for o in parsed if o.key_or_group in choices and not o.is_delete()]
    group_ids = {id(o) for o in groups}
    default_choices = compose(config_name=config_name, return_hydra_config=True).hydra.runtime.choices
    kept = [o for o in groups if default_choices.get(o.key_or_group) != choices.get(o.key_or_group)]
    # Values are compared with the defaults under the run's own group choices (gpt_tiny's n_layer).
    defaults = compose(config_name=config_name, overrides=[typed[id(o)] for o in groups])
    for o in parsed:
        if id(o) in group_ids:
            continue
        if o.is_delete() or o.is_add():
            kept.append(o)
            continue
        default = OmegaConf.select(defaults, o.key_or_group, default=None, throw_on_resolution_failure=False)
        value = o.value()
        if isinstance(default, (list, dict)) or OmegaConf.is_config(default):
            default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
        if value != default:
            kept.append(o)
    order = {id(o): i for i, o in enumerate(parsed)}
    return [typed[id(o)] for o in sorted(kept, key=lambda o: order[id(o)])]


def short_name(overrides: list[str]) -> str:
    """ "model=gpt_tiny model.optimizer.lr=1e-3 data.path=a/b" -> "model=gpt_tiny lr=1e-3 path=b"."""
    keys = [o.partition("=")[0] for o in overrides]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for o, key, short in zip(overrides, keys, last):
        if "=" not in o:  # a deletion (~key)
            parts.append(o)
            continue
        value = o.partition("=")[2]
        parts.append(f"{short if last.count(short) == 1 else key}={_short(value)}")
    return " ".join(parts)


def run_name() -> str | None:
    """A run name from the command line: the overrides that differ from the defaults, or the model's
    config name when none do; None outside a Hydra run (the tracker then picks one)."""
    hc = _hydra()
    if hc is None:
        return None
    overrides = [o for o in hc.overrides.task if _is_named(o.split("=", 1)[0])]
    try:
        overrides = differing_overrides(overrides, dict(hc.runtime.choices), hc.job.config_name)
    except Exception as e:  # naming must never stop a run: fall back to every override as typed
        log.debug("could not compare overrides with the defaults: %s", e)
    name = short_name(overrides) or str(hc.runtime.choices.get("model") or "default")
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def multirun_group() -> str | None:
    """In a Hydra multirun (or a sweep launched as one), the sweep folder's name: one W&B group per sweep."""
    hc = _hydra()
    if hc is None or str(hc.mode) != "RunMode.MULTIRUN":
        return None
    return Path(hc.sweep.dir).name or None
