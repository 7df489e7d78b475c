"""`model.init_from=<lmforge run folder | .ckpt | FSDP checkpoint folder>`: start from a run of lmforge's own, keeping
the weights that fit the chosen model. (A Hugging Face folder: lmforge/init_from.py, which calls this for a task
head on an HF backbone.)

The source decides the architecture: its net's dimensions replace `model.net.*` (the chosen config keeps its own
`dropout`, `num_labels` and `classifier_dropout`, which shape no pretrained weight). The source's tokenizer becomes
the data tokenizer, as for HF folders. Weights are matched by name, relative to the backbone: a BERT run's
`blocks.0.attn.q.weight` is a BERTClassifier's `backbone.blocks.0.attn.q.weight`. What matches in name and shape is
loaded; the chosen model's other weights are new (a classifier's head, initialised as in a fresh run); the
source's other weights are dropped (the MLM or LM head a classifier has no use for). The three lists are printed and
kept in summary.json (`init_from`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError
from lmforge.models.heads import SequenceClassifier

HEAD_ONLY_KEYS = ("num_labels", "classifier_dropout")  # a classifier's config beyond its backbone's
KEPT_FROM_TARGET = ("dropout", *HEAD_ONLY_KEYS)  # the chosen config's own: regularisation and the head


def backbone_class(cls: type) -> type:
    """The family net a class is built on: a classifier's backbone, else the class itself."""
    return cls.backbone_class if isinstance(cls, type) and issubclass(cls, SequenceClassifier) else cls


def _relative(key: str, cls: type) -> str:
    return key.removeprefix("backbone.") if issubclass(cls, SequenceClassifier) else key


@dataclass
class InitWeights:
    """A source net's weights, its class and config, where they came from, and its tokenizer (if known)."""

    init_from: str  # model.init_from as given
    origin: str  # the file or folder the weights were read from
    net_class: type[nn.Module]
    net_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer_json: Path | None

    def check_target(self, target: type) -> None:
        if backbone_class(target) is not backbone_class(self.net_class):
            from lmforge.models import registry

            family = registry.family_of(backbone_class(self.net_class))
            raise ConfigError(
                f"model.init_from={self.init_from!r} holds a {self.net_class.__name__} ("
                f"{family.name if family else '?'} family), but the chosen model trains a {target.__name__}; "
                f"choose a model of the same family (e.g. model={family.model_config if family else '?'} or "
                f"model={family.model_config if family else '?'}_cls)."
            )

    def net_config_for(self, target_cfg: dict[str, Any]) -> dict[str, Any]:
        """model.net for the chosen target: the source's dimensions, the target's own head and dropout."""
        dims = {k: v for k, v in self.net_config.items() if k not in HEAD_ONLY_KEYS}
        target = get_class(target_cfg["_target_"])
        kept = {k: target_cfg[k] for k in KEPT_FROM_TARGET if k in target_cfg}
        if not issubclass(target, SequenceClassifier):
            kept = {k: v for k, v in kept.items() if k not in HEAD_ONLY_KEYS}
        return {"_target_": target_cfg["_target_"], **dims, **kept}

    @torch.no_grad()
    def load_into(self, net: nn.Module) -> dict[str, Any]:
        """Copy the matching weights into `net`; the account of what was loaded, new and dropped."""
        if any(p.is_meta for p in net.parameters()):
            raise ConfigError(
                f"model.init_from={self.init_from!r} with a lmforge checkpoint needs the net built whole: set "
                "trainer.strategy.meta_init=false with trainer=fsdp."
            )
        source = {_relative(k, self.net_class): v for k, v in self.state_dict.items()}
        target = net.state_dict()
        loaded, new, mismatched = [], [], []
        for key, tensor in target.items():
            rel = _relative(key, type(net))
            if rel not in source:
                new.append(key)
            elif source[rel].shape != tensor.shape:
                mismatched.append(f"{key} {tuple(source[rel].shape)} -> {tuple(tensor.shape)}")
            else:
                tensor.copy_(source[rel].to(tensor.dtype))
                loaded.append(key)
        is_head = isinstance(net, SequenceClassifier)
        if backbone_mismatch := [m for m in mismatched if m.startswith("backbone.") or not is_head]:
            raise ConfigError(
                f"model.init_from={self.init_from!r}: weights of another shape than the chosen model's: "
                f"{backbone_mismatch[:4]}. The source's dimensions replace model.net.*: do not override them."
            )
        new += [m.split(" ")[0] for m in mismatched]  # a head of another size (num_labels) starts afresh
        used = {_relative(k, type(net)) for k in loaded}
        dropped = sorted(
            k for k, rel in ((k, _relative(k, self.net_class)) for k in self.state_dict) if rel not in used
        )
        params = sum(target[k].numel() for k in loaded)
        return {
            "source": self.init_from,
            "checkpoint": self.origin,
            "source_net": f"{self.net_class.__module__}.{self.net_class.__qualname__}",
            "loaded_tensors": len(loaded),
            "loaded_params": params,
            "new": sorted(new),
            "dropped": dropped,
        }


def checkpoint_of(path: str) -> Path:
    """The checkpoint that `model.init_from` names: a .ckpt file, an FSDP checkpoint folder, or a run folder's
    checkpoints/best.ckpt."""
    p = Path(path).expanduser()
    if p.is_file() or (p / ".metadata").is_file():
        return p
    if p.is_dir():
        best = p / "checkpoints" / "best.ckpt"
        if best.exists():
            return best
        found = sorted(q.name for q in (p / "checkpoints").glob("*")) if (p / "checkpoints").is_dir() else []
        raise ConfigError(
            f"model.init_from={path!r} is a folder without checkpoints/best.ckpt"
            + (f" (it has checkpoints/{', '.join(found)}: pass one of them as the file)" if found else "")
            + ". Give a lmforge run folder, a .ckpt file, or a Hugging Face folder (with config.json)."
        )
    raise ConfigError(
        f"model.init_from={path!r}: no such file or folder. Give a lmforge run folder, a .ckpt file or a Hugging "
        "Face folder."
    )


def read_run_weights(path: str) -> InitWeights:
    """The net weights of a lmforge checkpoint (file, FSDP folder, or a run folder's best.ckpt)."""
    ckpt_path = checkpoint_of(path)
    ckpt = read_checkpoint(ckpt_path, what="model.init_from")
    meta = ckpt["lmforge"]
    state = {k.removeprefix("net."): v.float() for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    tokenizer = next(
        (f / "tokenizer.json" for f in (ckpt_path.parent, ckpt_path.parent.parent) if (f / "tokenizer.json").is_file()),
        None,
    )
    return InitWeights(path, str(ckpt_path), get_class(meta["net_class"]), dict(meta["net_config"]), state, tokenizer)


def hf_weights(path: str, net: nn.Module, tokenizer_json: Path | None) -> InitWeights:
    """A net loaded from a Hugging Face folder, as a weights source (a task head on a pretrained HF backbone)."""
    config = net.config_dict()  # type: ignore[operator]  # every family net's (protocols.Net)
    return InitWeights(path, path, type(net), config, net.state_dict(), tokenizer_json)


def describe_init(report: dict[str, Any]) -> str:
    """The console's account of an init_from load."""
    new, dropped = report["new"], report["dropped"]
    return (
        f"init_from {report['checkpoint']}: loaded {report['loaded_tensors']} tensors "
        f"({report['loaded_params'] / 1e6:.2f}M parameters); new (initialised): {', '.join(new) or 'none'}; "
        f"dropped (unused): {', '.join(dropped) or 'none'}"
    )
