"""The model families lmforge knows, by name: each one's net class, Hugging Face adapter, HF model type(s) and
the model config to suggest. flops, export, init_from and models/hf.py find a family here instead of switching
on classes; adding a family is one model file, one adapter, one config and one `register(Family(...))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from torch import nn

from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT
from lmforge.models.heads import BERTClassifier, GPTClassifier, LlamaClassifier
from lmforge.models.llama import Llama
from lmforge.models.t5 import T5

if TYPE_CHECKING:
    from lmforge.models.hf import HFAdapter


@dataclass(frozen=True)
class Family:
    name: str  # "gpt"
    net_class: type[nn.Module]
    # Returns the family's HFAdapter; called only when a conversion runs, so that importing the registry
    # imports neither the adapters nor `transformers`.
    load_hf_adapter: Callable[[], HFAdapter]
    hf_model_types: tuple[str, ...]  # the `model_type`s of the HF configs the adapter reads
    model_config: str  # the model config group option that trains this family: `model=<model_config>`

    def hf_adapter(self) -> HFAdapter:
        return self.load_hf_adapter()


def adapter_in(module: str, name: str = "ADAPTER") -> Callable[[], HFAdapter]:
    """A loader for the `ADAPTER` (or `name`) of `module` (e.g. "lmforge.models.gpt_hf"), imported on first use."""
    return lambda: getattr(import_module(module), name)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family; its name and its HF model types must be new."""
    if family.name in FAMILIES:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    if taken := sorted(set(family.hf_model_types) & set(hf_model_types())):
        raise ValueError(f"HF model_type {taken} already belongs to another family")
    FAMILIES[family.name] = family
    return family


def family_of(net: nn.Module | type[nn.Module]) -> Family | None:
    """The family of a net (or net class). MRO-aware: FSDP2's fully_shard swaps a module's class for a generated
    subclass (FSDP<Name>), which still finds its family through the class it derives from."""
    cls = net if isinstance(net, type) else type(net)
    for base in cls.__mro__:
        for family in FAMILIES.values():
            if family.net_class is base:
                return family
    return None


def family_of_model_type(model_type: Any) -> Family | None:
    """The family whose adapter reads HF configs of this `model_type` (e.g. "gpt2")."""
    return next((f for f in FAMILIES.values() if model_type in f.hf_model_types), None)


def hf_model_types() -> list[str]:
    return sorted(t for f in FAMILIES.values() for t in f.hf_model_types)


# Task heads over a family's backbone (models/heads.py) export to the family's HF task class (e.g.
# BertForSequenceClassification); their adapters live beside the family's, in models/<family>_hf.py.
TASK_HEADS: dict[type[nn.Module], Callable[[], HFAdapter]] = {}


def task_adapter_of(net: nn.Module | type[nn.Module]) -> HFAdapter | None:
    """The HF adapter of a task-head net (or class), MRO-aware as family_of; None for anything else."""
    cls = net if isinstance(net, type) else type(net)
    return next((TASK_HEADS[base]() for base in cls.__mro__ if base in TASK_HEADS), None)


register(Family("gpt", GPT, adapter_in("lmforge.models.gpt_hf"), ("gpt2",), "gpt"))
register(Family("bert", BERT, adapter_in("lmforge.models.bert_hf"), ("bert",), "bert"))
register(Family("t5", T5, adapter_in("lmforge.models.t5_hf"), ("t5",), "t5"))
register(Family("llama", Llama, adapter_in("lmforge.models.llama_hf"), ("llama",), "llama"))

TASK_HEADS[BERTClassifier] = adapter_in("lmforge.models.bert_hf", "CLASSIFIER_ADAPTER")
TASK_HEADS[GPTClassifier] = adapter_in("lmforge.models.gpt_hf", "CLASSIFIER_ADAPTER")
TASK_HEADS[LlamaClassifier] = adapter_in("lmforge.models.llama_hf", "CLASSIFIER_ADAPTER")
