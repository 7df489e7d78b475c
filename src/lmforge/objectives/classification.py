"""Sequence classification (`model=bert_cls`, `gpt_cls`, `llama_cls`): one label per text or text pair.

The net is a classifier of lmforge/models/heads.py (pooled [CLS] for BERT, last real token for decoders); the data
is `data=classification` or the bundled `data=shakespeare_genre`, which hand over labelled token sequences
(protocols.MakesClassificationBatches) and the label set (protocols.LabelledData). The loss is cross-entropy over
the examples of a batch, optionally class-weighted; validation reports `val/loss`, `val/acc` and the macro `val/f1`
(torchmetrics, synced across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lmforge.errors import ConfigError
from lmforge.objectives.base import LMObjective
from lmforge.objectives.mlm import MaskedLM

PRETRAINING_OPTIONS = {"mask_prob", "mask_token_prob", "random_token_prob", "whole_word_mask"}  # model=bert's


@dataclass
class ClassificationBatches:
    """Labelled sequences -> a padded batch. `cls_id` None lays out a decoder's `A eos [B eos]` (no token types);
    with it, an encoder's `[CLS] A [SEP] [B [SEP]]` with token types 0 on `[CLS] A [SEP]` and 1 on `B [SEP]`. Pairs
    are truncated longest-first (as HF tokenizers do) so the whole example fits `max_len`. Padding is on the right."""

    pad_id: int
    sep_id: int  # [SEP] for an encoder, eos for a decoder
    cls_id: int | None
    max_len: int
    block_len: int = 0  # tokens of an average example (token budgets), from the data module

    def for_split(self, split: str) -> ClassificationBatches:
        return self  # nothing is drawn at random

    def classification_collator(self, max_len: int, block_len: int = 0) -> ClassificationBatches:
        return replace(self, max_len=max_len, block_len=block_len)

    def _layout(self, a: np.ndarray, b: np.ndarray | None) -> tuple[list[int], list[int]]:
        specials = (1 if self.cls_id is not None else 0) + (1 if b is None else 2)
        room = self.max_len - specials
        if room < (1 if b is None else 2):
            raise ConfigError(f"data.seq_len={self.max_len} leaves no room for text; give at least {specials + 2}.")
        la, lb = len(a), 0 if b is None else len(b)
        while la + lb > room:  # longest first: cut the longer side one token at a time
            if la >= lb:
                la -= 1
            else:
                lb -= 1
        first = ([self.cls_id] if self.cls_id is not None else []) + a[:la].tolist() + [self.sep_id]
        second = [] if b is None else b[:lb].tolist() + [self.sep_id]
        return first + second, [0] * len(first) + [1] * len(second)

    def __call__(self, examples, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        laid = [self._layout(np.asarray(e.a), None if e.b is None else np.asarray(e.b)) for e in examples]
        width = max(len(ids) for ids, _ in laid)
        input_ids = torch.full((len(laid), width), self.pad_id, dtype=torch.long)  # (batch, time)
        attention_mask = torch.zeros_like(input_ids)
        token_type_ids = torch.zeros_like(input_ids)
        for i, (ids, types) in enumerate(laid):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            token_type_ids[i, : len(ids)] = torch.tensor(types)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([int(e.label) for e in examples], dtype=torch.long),  # (batch,)
        }
        if self.cls_id is not None:
            batch["token_type_ids"] = token_type_ids
        return batch


class SequenceClassification(LMObjective):
    """Cross-entropy on one label per sequence. `class_weights`: null, "balanced" (n / (k * count) per label, from the
    training file's counts) or a list with one weight per label (in the label order of labels.json)."""

    name = "classification"
    logged_metrics = ("train/loss", "val/loss", "val/acc", "val/f1")
    net: Any  # a classifier of lmforge/models/heads.py (protocols.Net); its logits are (batch, num_labels)
    layout: ClassVar[str]  # "encoder" or "decoder": how a sequence or pair is laid out
    class_weights: torch.Tensor  # a buffer: (num_labels,)

    def __init__(
        self,
        net,
        optimizer,
        scheduler=None,
        init_from: str | None = None,
        class_weights: str | list[float] | None = None,
        **kwargs,  # LMObjective's: scale_options, run_config
    ):
        # model=bert_cls composes model=bert (`defaults: [bert, _self_]`), whose masking options come along; they
        # describe the pretraining, not this task, so they are accepted and unused. Anything else is a mistake.
        for key in PRETRAINING_OPTIONS & set(kwargs):
            kwargs.pop(key)
        super().__init__(net, optimizer, scheduler, init_from=init_from, **kwargs)
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ConfigError(f"model.class_weights={class_weights!r}: use null, balanced or a list of numbers.")
        self.class_weights_spec = class_weights
        k = net.num_labels
        self.register_buffer("class_weights", torch.ones(k), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes=k, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=k, average="macro")
        self.labels: list[str] = [str(i) for i in range(k)]

    def bind_labels(self, labels: list[str], train_counts: list[int]) -> None:
        """The label names (checkpoints keep them: exports' id2label) and the training counts (balanced weights)."""
        k = self.net.num_labels
        if len(labels) != k:
            raise ConfigError(f"the data has {len(labels)} labels but model.net.num_labels={k}; leave it unset.")
        self.labels = list(labels)
        spec = self.class_weights_spec
        if spec is None:
            return
        if spec == "balanced":
            counts = torch.tensor(train_counts, dtype=torch.float).clamp(min=1)
            weights = counts.sum() / (k * counts)
        else:
            weights = torch.tensor([float(w) for w in spec])
            if len(weights) != k or (weights < 0).any():
                raise ConfigError(
                    f"model.class_weights has {len(weights)} value(s); give {k} non-negative numbers, one per "
                    f"label in the order {labels}."
                )
        self.class_weights.copy_(weights)

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> ClassificationBatches:
        if seq_len > self.net.max_seq_len:
            raise ConfigError(
                f"data.seq_len={seq_len} exceeds the model's context (model.net.max_seq_len={self.net.max_seq_len})."
            )
        if self.layout == "encoder":
            return ClassificationBatches(special_ids["pad"], special_ids["sep"], special_ids["cls"], seq_len)
        return ClassificationBatches(special_ids["pad"], special_ids["eos"], None, seq_len)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over the batch's examples, number of examples): val/loss is weighted by examples."""
        return self._loss_of(self.logits(batch), batch["labels"])

    def _loss_of(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.class_weights if self.class_weights_spec is not None else None
        loss = F.cross_entropy(logits.float(), labels, weight=weight)  # logits: (batch, num_labels)
        return loss, torch.tensor(labels.numel(), device=logits.device)

    def eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        logits, labels = self.logits(batch), batch["labels"]
        self.val_loss.update(*self._loss_of(logits, labels))
        pred = logits.argmax(dim=-1)
        self.val_acc.update(pred, labels)
        self.val_f1.update(pred, labels)

    def on_eval_epoch_end(self, stage: str) -> None:
        # no val/ppl: a perplexity over labels means nothing
        self.log(f"{stage}/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.log(f"{stage}/acc", self.val_acc.compute(), prog_bar=True, sync_dist=False)
        self.log(f"{stage}/f1", self.val_f1.compute(), sync_dist=False)
        for metric in (self.val_loss, self.val_acc, self.val_f1):
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lmforge"]["labels"] = list(self.labels)  # exports' id2label

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.labels = list(checkpoint.get("lmforge", {}).get("labels", self.labels))

    def sample_texts(self, tokenizer, **kwargs) -> list[str]:
        return []  # nothing to generate; val/acc and val/f1 say what it learned


class EncoderClassification(SequenceClassification):
    """BERT: `[CLS] A [SEP] B [SEP]`. The same special tokens as MLM, so a pretrained BERT run's tokenizer fits."""

    layout = "encoder"
    special_tokens = dict(MaskedLM.special_tokens)

    @classmethod
    def net_token_ids(cls, special_ids: dict[str, int]) -> dict[str, int]:
        return {"pad_token_id": special_ids["pad"]}

    @classmethod
    def hf_post_processor(cls, tokenizer):
        """For exported tokenizers: encode adds [CLS] .. [SEP] (and token types on pairs), as in training."""
        return MaskedLM.hf_post_processor(tokenizer)


class DecoderClassification(SequenceClassification):
    """GPT / Llama: `A eos B eos`, read at the last real token. A pad token of its own (not eos): the export's
    GPT2ForSequenceClassification finds the last real token as the last one that is not the pad id, and eos is one."""

    layout = "decoder"
    special_tokens = {"eos": "<|endoftext|>", "pad": "<|pad|>"}

    @classmethod
    def hf_post_processor(cls, tokenizer):
        """For exported tokenizers: encode appends eos to each text (and token types on pairs), as in training."""
        from tokenizers.processors import TemplateProcessing

        e = cls.special_tokens["eos"]
        return TemplateProcessing(
            single=f"$A {e}", pair=f"$A {e} $B:1 {e}:1", special_tokens=[(e, tokenizer.token_to_id(e))]
        )
