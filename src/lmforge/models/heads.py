"""Sequence classifiers over a family's backbone: one label per sequence instead of one token per position.

Each classifier holds the family's net as `backbone` with its language-model head removed (the MLM or LM head
predicts tokens; a classifier does not need it, and unused parameters would only cost memory and trouble DDP),
and puts a small head on one position of the last hidden states:

  BERTClassifier    the [CLS] position (the first), through a pooler (dense + tanh, as HF's BertPooler, so the
                    export is a BertForSequenceClassification), dropout and a linear classifier
  GPTClassifier     the last non-pad position (a causal model has read the whole sequence only there), through a
  LlamaClassifier   bias-free linear `score`, as HF's GPT2ForSequenceClassification / LlamaForSequenceClassification

They keep the Net contract (lmforge/protocols.py): `config` is the backbone's (vocabulary, context, pad id), and
`config_dict()` adds `num_labels` and `classifier_dropout`, so `type(net)(**net.config_dict())` rebuilds one and
checkpoints, FLOPs/MFU and parallel wrapping work as for the family's net. Knows nothing of Lightning or losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from lmforge.flops import linear_flops
from lmforge.models.base import init_normal
from lmforge.models.bert import BERT, bert_forward_flops
from lmforge.models.gpt import GPT, gpt_forward_flops
from lmforge.models.llama import Llama, llama_forward_flops


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) index of each row's last real token, wherever the padding is: the rightmost position with mask 1.
    (Not `mask.sum() - 1`, which is right only for right padding.)"""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


class SequenceClassifier(nn.Module):
    """What the three classifiers share: the backbone without its LM head, the Net contract, the head's init."""

    backbone_class: ClassVar[type[nn.Module]]
    lm_head_modules: ClassVar[tuple[str, ...]]  # the backbone's token-prediction head, removed here
    config: Any  # the backbone's config dataclass

    def __init__(self, num_labels: int, classifier_dropout: float | None = None, **backbone_kwargs: Any):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"model.net.num_labels={num_labels}: a classifier needs at least 2 labels")
        self.num_labels = num_labels
        self.backbone: Any = self.backbone_class(**backbone_kwargs)
        for name in self.lm_head_modules:
            setattr(self.backbone, name, None)
        self.config = self.backbone.config
        dropout = self.config.dropout if classifier_dropout is None else classifier_dropout
        self.classifier_dropout = classifier_dropout
        self.drop = nn.Dropout(dropout)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def config_dict(self) -> dict[str, Any]:
        return {
            **self.backbone.config_dict(),
            "num_labels": self.num_labels,
            "classifier_dropout": self.classifier_dropout,
        }

    def transformer_blocks(self) -> list[nn.Module]:
        return self.backbone.transformer_blocks()

    def position_parameters(self) -> list[nn.Parameter]:
        return self.backbone.position_parameters()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - sum(p.numel() for p in self.position_parameters()) if exclude_embeddings else n

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)draw every parameter: the backbone's own init, then N(0, 0.02) head weights and zero biases (HF's)."""
        self.backbone.init_weights()
        for module in self.head_modules():
            module.apply(init_normal)


class BERTClassifier(SequenceClassifier):
    """BERT with a pooled-[CLS] classifier. Keyword arguments: BERTConfig's, num_labels, classifier_dropout."""

    backbone_class = BERT
    lm_head_modules = ("head_fc", "head_ln", "lm_head")

    def __init__(self, num_labels: int, classifier_dropout: float | None = None, **kwargs: Any):
        super().__init__(num_labels, classifier_dropout, **kwargs)
        d = self.config.d_model
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, num_labels)
        self.init_weights()

    def head_modules(self) -> list[nn.Module]:
        return [self.pooler, self.classifier]

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        b, t = batch["input_ids"].shape[:2]
        c, n = self.config, b * t
        mlm_head = linear_flops(n, c.d_model, c.d_model) + linear_flops(n, c.d_model, c.vocab_size)
        head = linear_flops(b, c.d_model, c.d_model) + linear_flops(b, c.d_model, self.num_labels)
        return bert_forward_flops(c, b, t) - mlm_head + head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, num_labels) from the first position ([CLS]); padding keys are masked in attention."""
        h = self.backbone.hidden_states(input_ids, attention_mask, token_type_ids)  # (batch, time, d)
        pooled = torch.tanh(self.pooler(h[:, 0]))  # (batch, d)
        return self.classifier(self.drop(pooled))


class DecoderClassifier(SequenceClassifier):
    """A causal backbone read at each row's last real token through a bias-free `score` (HF's layout)."""

    lm_head_modules = ("lm_head",)

    def __init__(self, num_labels: int, classifier_dropout: float | None = None, **kwargs: Any):
        super().__init__(num_labels, classifier_dropout, **kwargs)
        self.score = nn.Linear(self.config.d_model, num_labels, bias=False)
        self.init_weights()

    def head_modules(self) -> list[nn.Module]:
        return [self.score]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # batches of other families carry them; a decoder has none
    ) -> torch.Tensor:
        """Logits (batch, num_labels). Causal attention: a real token never sees the padding after it, so no
        padding mask is needed; the mask only says where each row's last real token is."""
        h = self.backbone.hidden_states(input_ids)  # (batch, time, d)
        if attention_mask is None:
            last = torch.full((input_ids.size(0),), input_ids.size(1) - 1, device=input_ids.device)
        else:
            last = last_token_index(attention_mask)
        picked = h[torch.arange(h.size(0), device=h.device), last]  # (batch, d)
        return self.score(self.drop(picked))

    def _flops(self, trunk_with_lm_head: int, b: int, t: int) -> int:
        lm_head = linear_flops(b * t, self.config.d_model, self.config.vocab_size)
        return trunk_with_lm_head - lm_head + linear_flops(b, self.config.d_model, self.num_labels)


class GPTClassifier(DecoderClassifier):
    """GPT with a last-token classifier. Keyword arguments: GPTConfig's, num_labels, classifier_dropout."""

    backbone_class = GPT

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        b, t = batch["input_ids"].shape[:2]
        return self._flops(gpt_forward_flops(self.config, b, t), b, t)


class LlamaClassifier(DecoderClassifier):
    """Llama with a last-token classifier. Keyword arguments: LlamaConfig's, num_labels, classifier_dropout."""

    backbone_class = Llama

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        b, t = batch["input_ids"].shape[:2]
        return self._flops(llama_forward_flops(self.config, b, t), b, t)


CLASSIFIERS: dict[type[nn.Module], type[SequenceClassifier]] = {
    BERT: BERTClassifier,
    GPT: GPTClassifier,
    Llama: LlamaClassifier,
}
