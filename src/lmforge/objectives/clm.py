"""Causal language modelling (GPT, Llama): packed blocks (optionally kept apart by document masks), next-token
loss, sampling with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lmforge import generation
from lmforge.models import masks
from lmforge.objectives.base import LMObjective
from lmforge.objectives.losses import IGNORE_INDEX, token_cross_entropy


@dataclass
class PackedCausalBatches:
    """Documents are packed back to back (each followed by eos) into blocks of `block_len` tokens.

    As in Hugging Face, `labels` equal `input_ids`; the loss shifts them by one. With `document_mask`
    (data.document_mask, passed in by the data module through `with_document_mask`), batches also carry each
    token's `document_ids` and `position_ids` (restarting at 0 per document; lmforge.models.masks), and the label
    of every later document's first token is ignored: it would be predicted from the eos of the document before,
    which its document cannot see (as Megatron-LM's eod_mask_loss, and Hugging Face's DataCollatorWithFlattening).
    """

    block_len: int
    eos_id: int | None = None
    document_mask: bool = False

    def for_split(self, split: str) -> PackedCausalBatches:
        return self  # packing draws nothing: validation batches are built as training's

    def with_document_mask(self) -> PackedCausalBatches:
        if self.eos_id is None:
            raise ValueError("a document mask needs the eos id that ends each document")
        return replace(self, document_mask=True)

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.stack(blocks)).long()
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        if self.document_mask:
            assert self.eos_id is not None
            docs = masks.document_ids(ids, self.eos_id)
            batch["labels"][masks.first_tokens_of_later_documents(docs)] = IGNORE_INDEX
            batch.update(document_ids=docs, position_ids=masks.positions_in_documents(docs))
        return batch


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of predicting labels[t+1] from position t, number of targets); -100 labels are ignored."""
    return token_cross_entropy(logits[:, :-1], labels[:, 1:])


class CausalLM(LMObjective):
    name = "clm"
    special_tokens = {"eos": "<|endoftext|>"}
    # How a prompt is continued: causally here; a prefix LM reads the prompt bidirectionally first.
    decode = staticmethod(generation.sample)

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> PackedCausalBatches:
        return PackedCausalBatches(block_len=seq_len, eos_id=special_ids.get("eos"))

    def loss(self, batch):
        # documents and prefixes (if the batch has them) become positions and one attention mask per forward
        logits = self.net(batch["input_ids"], **masks.decoder_inputs(batch))
        return next_token_loss(logits, batch["labels"])

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """Continue `input_ids` (batch, time). temperature 0 is greedy. Stops at the model's context.
        See lmforge.generation.sample (and `decode` below)."""
        return self.decode(self.net, input_ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache)

    def sample_texts(
        self,
        tokenizer,
        num_samples: int = 3,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 50,
        prompt: str = "",
        seed: int = 0,
        top_p: float | None = None,
        **_: Any,
    ) -> list[str]:
        eos = tokenizer.token_to_id(self.special_tokens["eos"])
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        start = torch.tensor([[eos] + ids] * num_samples, device=self.device)  # start as a fresh document
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = self.generate(start, max_new_tokens, temperature, top_k, generator=gen, top_p=top_p)
        return [prompt + tokenizer.decode(row[start.size(1) :].tolist()) for row in out]
