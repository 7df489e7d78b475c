"""Conversion between lmforge nets and Hugging Face `transformers` models, both ways, for every family in
lmforge.models.registry (GPT <-> GPT2LMHeadModel, BERT <-> BertForMaskedLM, T5 <-> T5ForConditionalGeneration).

This module is the generic part: each family's `HFAdapter` (models/<family>_hf.py) holds one table of
(lmforge key, HF key, transpose) used in both directions, its config translation and its special cases. Every
copy checks that both state dicts are covered, so a forgotten weight is an error, not a silently random layer.
`transformers` is an optional extra, imported only inside functions (adapters included).
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.models import registry
from lmforge.protocols import Net

Pairs = list[tuple[str, str, bool]]  # (lmforge key, HF key, transpose)


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            'Hugging Face interop needs the "hf" extra (transformers, safetensors): pip install -e ".[hf]"'
        ) from e
    return transformers


def unsupported(model_type: str, what: str) -> ValueError:
    """The error for a Hugging Face checkpoint whose config the family cannot represent."""
    return ValueError(f"cannot convert this {model_type} checkpoint: {what}")


class HFAdapter(ABC):
    """How one family's net maps onto its Hugging Face class. Subclassed in models/<family>_hf.py and found
    through the registry; methods import `transformers` when called (`import_transformers()`), never at import."""

    hf_class: str  # the transformers class, e.g. "GPT2LMHeadModel"
    # The exported config takes the tokenizer's pad id (GPT); otherwise the net config carries its own.
    pad_token_from_tokenizer: bool = False

    def hf_model_class(self) -> Any:
        """The transformers model class; a family whose HF model lives outside transformers returns its own."""
        return getattr(import_transformers(), self.hf_class)

    # A family may map onto more than one HF class (BERT: BertForMaskedLM, or BertForPreTraining with the pair head).
    # `hf_class` is the default; these three pick the class for a net, for a folder's config, and list those read.
    def hf_class_of(self, net: Any) -> str:
        return self.hf_class

    def hf_class_of_config(self, hf_config: Any) -> str:
        return self.hf_class

    def hf_classes(self) -> tuple[str, ...]:
        return (self.hf_class,)

    def hf_model_class_named(self, name: str) -> Any:
        return self.hf_model_class() if name == self.hf_class else getattr(import_transformers(), name)

    @abstractmethod
    def key_pairs(self, net: Any) -> Pairs:
        """(lmforge key, HF key, transpose) for every weight, used in both directions."""

    @abstractmethod
    def to_hf_config(self, net: Any) -> Any:
        """The transformers config of `net`."""

    @abstractmethod
    def from_hf_config(self, hf_model: Any) -> nn.Module:
        """A freshly initialised net shaped as `hf_model`; raises `unsupported(...)` for what the family lacks."""

    def prepare_hf_model(self, net: Any, hf_model: Any) -> set[str]:
        """Adjust the new HF model before the weights are copied in; returns the HF keys the net has no weight
        for, which are written as zeros."""
        return set()


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)  # torch.compile(net) returns a wrapper that keeps the module here


def _family_net(net: nn.Module) -> Net:
    net = _unwrap(net)
    assert isinstance(net, Net), f"{type(net).__name__} does not implement lmforge.protocols.Net"
    return net


def _adapter_of_net(net: nn.Module) -> HFAdapter:
    task_head = registry.task_adapter_of(net)  # a classifier over a family's backbone (models/heads.py)
    if task_head is not None:
        return task_head
    family = registry.family_of(net)
    if family is None:
        expected = [f.net_class.__name__ for f in registry.FAMILIES.values()]
        raise TypeError(
            f"no Hugging Face mapping for {type(net).__name__}; expected "
            + (", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 else "".join(expected))
        )
    return family.hf_adapter()


def _adapter_of_model_type(model_type: Any) -> HFAdapter | None:
    family = registry.family_of_model_type(model_type)
    return None if family is None else family.hf_adapter()


@torch.no_grad()
def _copy(
    src: nn.Module, dst: nn.Module, pairs: Pairs, to_hf: bool, zero_fill: set[str] | frozenset[str] = frozenset()
) -> None:
    """Copy weights along `pairs`; every destination key must be written (or be in `zero_fill`)
    and every source key read. State-dict tensors share storage with the parameters."""
    s_sd, d_sd = src.state_dict(), dst.state_dict()
    used, written = set(), set()
    for ours, theirs, t in pairs:
        s, d = (ours, theirs) if to_hf else (theirs, ours)
        if s not in s_sd:
            if to_hf and d in zero_fill:
                continue
            raise KeyError(f"expected weight {s!r} in the source {type(src).__name__} state dict")
        w = s_sd[s].t() if t else s_sd[s]
        if d_sd[d].shape != w.shape:
            raise ValueError(f"shape mismatch copying {s} {tuple(w.shape)} -> {d} {tuple(d_sd[d].shape)}")
        d_sd[d].copy_(w)
        used.add(s)
        written.add(d)
    for d in zero_fill - written:
        d_sd[d].zero_()
        written.add(d)
    if missing := sorted(set(d_sd) - written):
        raise RuntimeError(f"conversion left {type(dst).__name__} weights unset: {missing}")
    if unused := sorted(set(s_sd) - used):
        raise RuntimeError(f"conversion ignored {type(src).__name__} weights: {unused}")


# ---------------------------------------------------------------- lmforge -> HF


def to_hf(net: nn.Module) -> Any:
    """The `transformers` model (fp32, CPU, eval mode) holding a copy of `net`'s weights."""
    import_transformers()  # first: without the extra, say which one to install
    net = _unwrap(net)
    adapter = _adapter_of_net(net)  # raises TypeError for an unknown net
    pairs = adapter.key_pairs(net)
    hf = adapter.hf_model_class_named(adapter.hf_class_of(net))(adapter.to_hf_config(net))
    zero_fill = adapter.prepare_hf_model(net, hf)
    _copy(net, hf, pairs, to_hf=True, zero_fill=zero_fill)
    return hf.eval()


# ---------------------------------------------------------------- HF -> lmforge


def from_hf(hf_model: Any) -> nn.Module:
    """An lmforge net (fp32, CPU) with the weights of a Hugging Face model of a registered family
    (GPT2LMHeadModel, BertForMaskedLM, T5ForConditionalGeneration)."""
    adapter = _adapter_of_model_type(getattr(getattr(hf_model, "config", None), "model_type", None))
    if adapter is None or type(hf_model).__name__ not in adapter.hf_classes():
        classes = sorted(c for f in registry.FAMILIES.values() for c in f.hf_adapter().hf_classes())
        raise TypeError(f"from_hf takes one of {classes}, got {type(hf_model).__name__}")
    net = adapter.from_hf_config(hf_model)
    _copy(hf_model, net, adapter.key_pairs(net), to_hf=False)
    return net


# ---------------------------------------------------------------- folders

# Special-token strings recognised in a tokenizer.json, by role (first match wins).
SPECIAL_TOKENS = {
    "pad_token": ["[PAD]", "<pad>", "<|pad|>"],
    "unk_token": ["[UNK]", "<unk>", "<|unk|>"],
    "mask_token": ["[MASK]", "<mask>", "<|mask|>"],
    "cls_token": ["[CLS]", "<cls>"],
    "sep_token": ["[SEP]", "<sep>"],
    "bos_token": ["<s>", "<bos>", "<|bos|>", "[BOS]", "<|endoftext|>"],
    "eos_token": ["</s>", "<eos>", "<|eos|>", "[EOS]", "<|endoftext|>"],
}


def hf_tokenizer(
    tokenizer_json: str | Path, special_tokens: dict[str, str] | None = None, model_max_length: int | None = None
):
    """A PreTrainedTokenizerFast over a `tokenizers` tokenizer.json. Special-token roles are
    recognised from its added tokens (see SPECIAL_TOKENS); `special_tokens` overrides them."""
    tf = import_transformers()
    path = Path(tokenizer_json)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizers tokenizer.json")
    added = {t["content"] for t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])}
    roles = {
        role: next(s for s in cands if s in added)
        for role, cands in SPECIAL_TOKENS.items()
        if any(s in added for s in cands)
    }
    roles.update(special_tokens or {})
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return tf.PreTrainedTokenizerFast(tokenizer_file=str(path), **roles, **extra)


def save_hf_folder(
    net: nn.Module,
    tokenizer_json: str | Path | None,
    out_dir: str | Path,
    special_tokens: dict[str, str] | None = None,
    config_updates: dict[str, Any] | None = None,
) -> Path:
    """Write a Hugging Face folder (config.json + model.safetensors, and with a tokenizer.json the
    tokenizer files) that `transformers.AutoModelFor*.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)` load. `config_updates`: config attributes to set (a classifier's
    id2label and label2id)."""
    hf = to_hf(net)
    for key, value in (config_updates or {}).items():
        setattr(hf.config, key, value)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is not None:
        tok = hf_tokenizer(tokenizer_json, special_tokens, model_max_length=_family_net(net).max_seq_len)
        if len(tok) > hf.config.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer_json} has {len(tok)} tokens but the model's vocabulary has "
                f"{hf.config.vocab_size} (model.net.vocab_size); they must come from the same run"
            )
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
        if _adapter_of_net(_unwrap(net)).pad_token_from_tokenizer:
            ids["pad_token_id"] = tok.pad_token_id
        elif tok.pad_token_id is not None and tok.pad_token_id != hf.config.pad_token_id:
            warnings.warn(
                f"tokenizer pad id {tok.pad_token_id} differs from model.net.pad_token_id={hf.config.pad_token_id}",
                stacklevel=2,
            )
        for k, v in ids.items():
            if v is not None:
                setattr(hf.config, k, v)
                if getattr(hf, "generation_config", None) is not None:
                    setattr(hf.generation_config, k, v)
        tok.save_pretrained(out)
    hf.save_pretrained(out)  # safetensors by default
    return out


def load_hf_folder(path: str | Path) -> nn.Module:
    """An lmforge net from a local Hugging Face checkpoint folder (GPT-2, BERT-MLM or T5)."""
    tf = import_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
    hf_config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    mt = hf_config.model_type
    adapter = _adapter_of_model_type(mt)
    if adapter is None:
        raise ValueError(f"{path}: model_type={mt!r} has no lmforge family; supported: {registry.hf_model_types()}")
    cls_name = adapter.hf_class_of_config(hf_config)
    hf, info = adapter.hf_model_class_named(cls_name).from_pretrained(
        path, local_files_only=True, output_loading_info=True
    )
    if info["missing_keys"]:
        raise ValueError(f"{path}: checkpoint lacks weights the {cls_name} head needs: {sorted(info['missing_keys'])}")
    return from_hf(hf.float())
