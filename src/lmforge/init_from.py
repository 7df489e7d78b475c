"""`model.init_from=<HF folder>`: start training from a local Hugging Face checkpoint.

The folder decides the architecture: its dimensions replace `model.net.*` in the run's config (so
the run folder and checkpoints say what was trained). Its embeddings only mean something with the
tokenizer it was trained with, so the data tokenizer is the folder's `tokenizer.json` (used
automatically when `tokenizer.path` is unset); a different vocabulary is refused.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models import registry
from lmforge.protocols import Net
from lmforge.validate import check_context


def _vocab(path: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab()


def load_init_net(cfg: DictConfig) -> nn.Module | None:
    """The net of `model.init_from` (None when unset); fills its dims and tokenizer into `cfg`."""
    path = OmegaConf.select(cfg, "model.init_from")
    if not path:
        return None
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.init_from={path!r} is not a Hugging Face checkpoint folder (no config.json). "
            "Point it at a folder written by `python -m lmforge.export` or `save_pretrained`."
        )
    from lmforge.models.hf import load_hf_folder

    try:
        net = load_hf_folder(folder)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.init_from={path!r}: {e}") from None
    assert isinstance(net, Net)  # every registered family's net is one (lmforge/protocols.py)
    expected = get_class(cfg.model.net._target_)
    if type(net) is not expected:
        family = registry.family_of(net)
        raise ConfigError(
            f"model.init_from={path!r} holds a {type(net).__name__} checkpoint, but the chosen model "
            f"trains a {expected.__name__}; use model={family.model_config if family else '?'} with it."
        )
    tokenizer_json = folder / "tokenizer.json"
    with open_dict(cfg):
        cfg.model.net = {"_target_": f"{type(net).__module__}.{type(net).__qualname__}", **net.config_dict()}
        given = OmegaConf.select(cfg, "tokenizer.path")
        if given is None:
            if not tokenizer_json.is_file():
                raise ConfigError(
                    f"model.init_from={path!r} has no tokenizer.json, and its embeddings only fit the tokenizer "
                    "it was trained with: pass that one as tokenizer=pretrained tokenizer.path=<tokenizer.json>."
                )
            cfg.tokenizer.path = str(tokenizer_json)
        elif (
            tokenizer_json.is_file()
            and Path(given).expanduser().is_file()
            and _vocab(Path(given).expanduser()) != _vocab(tokenizer_json)
        ):
            raise ConfigError(
                f"tokenizer.path={given!r} has a different vocabulary from the tokenizer.json of "
                f"model.init_from={path!r}; unset tokenizer.path to use the checkpoint's."
            )
    check_context(cfg)
    return net


def check_vocab_fits(net: nn.Module, vocab_size: int, special_ids: dict[str, int], init_from: str) -> None:
    """The data tokenizer's ids, the objective's special tokens included, must index the net's embeddings."""
    assert isinstance(net, Net)
    n = net.config.vocab_size
    too_big = {role: i for role, i in special_ids.items() if i >= n}
    if vocab_size > n or too_big:
        raise ConfigError(
            f"model.init_from={init_from!r}: the tokenizer has {vocab_size} tokens"
            + (f" (the objective's special tokens {sorted(too_big)[:5]} were added at ids >= {n})" if too_big else "")
            + f", but the checkpoint's vocabulary has {n} (vocab mismatch). Use the checkpoint's own tokenizer, "
            "with the special tokens this objective needs."
        )
