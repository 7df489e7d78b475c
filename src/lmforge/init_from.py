"""`model.init_from=<HF folder | lmforge run folder | .ckpt>`: start training from a local Hugging Face checkpoint or
from a lmforge run (lmforge/init_weights.py: only the weights that fit the chosen model load, e.g. a pretrained BERT
into model=bert_cls).

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
from lmforge.init_weights import InitWeights, hf_weights, read_run_weights
from lmforge.models import registry
from lmforge.models.heads import SequenceClassifier
from lmforge.protocols import Net
from lmforge.validate import check_context


def _vocab(path: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab()


def load_init(cfg: DictConfig) -> tuple[nn.Module | None, InitWeights | None]:
    """What `model.init_from` starts from, its dims and tokenizer filled into `cfg`: (the net, None) for a Hugging
    Face folder of the chosen family's net, as it is; (None, weights to load into the built net) for a lmforge run or
    checkpoint, or an HF backbone under a task head; (None, None) when unset."""
    path = OmegaConf.select(cfg, "model.init_from")
    if not path:
        return None, None
    target = get_class(cfg.model.net._target_)
    if not (Path(path).expanduser() / "config.json").is_file():
        weights = read_run_weights(path)
    elif issubclass(target, SequenceClassifier):  # an HF BERT / GPT-2 / Llama under a new classification head
        folder = Path(path).expanduser()
        net = _hf_net(path, folder)
        weights = hf_weights(path, net, folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None)
    else:
        return load_init_net(cfg), None
    weights.check_target(target)
    with open_dict(cfg):
        cfg.model.net = weights.net_config_for(OmegaConf.to_container(cfg.model.net))  # type: ignore[arg-type]
        _use_tokenizer(cfg, path, weights.tokenizer_json)
    check_context(cfg)
    return None, weights


def _hf_net(path: str, folder: Path) -> nn.Module:
    from lmforge.models.hf import load_hf_folder

    try:
        return load_hf_folder(folder)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.init_from={path!r}: {e}") from None


def _use_tokenizer(cfg: DictConfig, path: str, tokenizer_json: Path | None) -> None:
    """The source's tokenizer becomes the data's (its embeddings only fit it); a different one given is refused."""
    given = OmegaConf.select(cfg, "tokenizer.path")
    if given is None:
        if tokenizer_json is None or not tokenizer_json.is_file():
            raise ConfigError(
                f"model.init_from={path!r} has no tokenizer.json, and its embeddings only fit the tokenizer "
                "it was trained with: pass that one as tokenizer=pretrained tokenizer.path=<tokenizer.json>."
            )
        cfg.tokenizer.path = str(tokenizer_json)
    elif (
        tokenizer_json is not None
        and tokenizer_json.is_file()
        and Path(given).expanduser().is_file()
        and _vocab(Path(given).expanduser()) != _vocab(tokenizer_json)
    ):
        raise ConfigError(
            f"tokenizer.path={given!r} has a different vocabulary from the tokenizer.json of "
            f"model.init_from={path!r} (vocab mismatch); unset tokenizer.path to use the checkpoint's."
        )


def load_init_net(cfg: DictConfig) -> nn.Module | None:
    """The net of a Hugging Face `model.init_from` folder (None when unset); fills its dims and tokenizer into `cfg`."""
    path = OmegaConf.select(cfg, "model.init_from")
    if not path:
        return None
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.init_from={path!r} is not a Hugging Face checkpoint folder (no config.json). "
            "Point it at a folder written by `python -m lmforge.export` or `save_pretrained`."
        )
    net = _hf_net(path, folder)
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
        _use_tokenizer(cfg, path, tokenizer_json if tokenizer_json.is_file() else None)
    check_context(cfg)
    return net


def check_vocab_fits(net: nn.Module | int, vocab_size: int, special_ids: dict[str, int], init_from: str) -> None:
    """The data tokenizer's ids, the objective's special tokens included, must index the net's embeddings (`net`: a
    net, or its vocabulary size)."""
    if isinstance(net, int):
        n = net
    else:
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
