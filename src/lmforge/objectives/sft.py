"""Supervised fine-tuning (instruction tuning) of the decoder families: `model=gpt_sft`, `model=llama_sft` with
`data=instructions` (or a generated task such as `data=reverse_words`).

A thin layer over causal LM: the same net, forward and next-token loss; what changes is the batch. Examples
(lmforge.data.instructions: prompt and responses rendered by the data's chat template, tokenized) are padded on the
right to the longest of each batch (length-bucketed, so little is wasted; no packing, so no example sees another).
Labels are the token ids on response tokens (the responses' content and their eos) and -100 on prompt tokens and
padding, so the loss is the cross-entropy over the batch's response tokens, summed and divided by their number:
token-weighted, not a mean of per-example means (a long response counts for more, as in Hugging Face's SFT). Right
padding needs no attention mask in a causal net: no real token attends to a later pad.

`val/loss` is over validation response tokens; `val/exact_match` is the share of a fixed sample of validation
prompts (the first `model.exact_match_samples` of the split, per rank) whose greedy decoding reproduces the last
response token for token, eos included. `tokens_seen` and token budgets count real tokens, not padding.

With plain LM data (data=shakespeare ...) the objective trains as causal LM: its batch builder is CLM's packing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics import MeanMetric

from lmforge import generation
from lmforge.errors import ConfigError
from lmforge.objectives.clm import CausalLM, PackedCausalBatches
from lmforge.objectives.losses import IGNORE_INDEX


@dataclass
class InstructionCollator:
    """InstructionExamples -> a right-padded batch: `input_ids`, `attention_mask`, `labels` (batch, time) with -100
    off the responses, `response_start` (batch,) and `num_tokens` (a host int: the real tokens, for tokens_seen)."""

    pad_id: int
    block_len: int  # tokens of an average example (token budgets), from the instructions data module

    def for_split(self, split: str) -> InstructionCollator:
        return self  # padding draws nothing

    def __call__(self, examples, rng: np.random.Generator | None = None) -> dict[str, Any]:
        longest = max(len(e.ids) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, e in enumerate(examples):
            n, ids = len(e.ids), torch.from_numpy(e.ids)
            input_ids[i, :n], attention_mask[i, :n] = ids, 1
            labels[i, :n] = torch.where(torch.from_numpy(e.trained), ids, IGNORE_INDEX)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "response_start": torch.tensor([e.response_start for e in examples], dtype=torch.long),
            "num_tokens": int(attention_mask.sum()),  # counted here, on the host: no device sync in training
        }


@dataclass
class SFTBatches(PackedCausalBatches):
    """CLM's packed blocks for stream data; `instruction_collator` for instruction data
    (protocols.MakesInstructionBatches)."""

    pad_id: int = 0

    def instruction_collator(self, block_len: int) -> InstructionCollator:
        return InstructionCollator(self.pad_id, block_len)


def matches(generated: list[int], reference: list[int]) -> bool:
    """Greedy output equals the reference response (which ends with eos) token for token."""
    return generated[: len(reference)] == reference


class SupervisedFineTuning(CausalLM):
    name = "sft"
    logged_metrics = (*CausalLM.logged_metrics, "val/exact_match")
    # pad: its own token (labels ignore it either way). The role tokens are there for templates that want one token
    # per marker (data.template.user="<|user|>\n{content}\n"); the default template is plain text and ignores them.
    special_tokens = {
        "eos": "<|endoftext|>",
        "pad": "<|pad|>",
        "system": "<|system|>",
        "user": "<|user|>",
        "assistant": "<|assistant|>",
    }

    def __init__(self, net, optimizer, scheduler=None, exact_match_samples: int = 64, **kwargs):
        super().__init__(net, optimizer, scheduler, **kwargs)
        if not isinstance(exact_match_samples, int) or exact_match_samples < 0:
            raise ConfigError(
                f"model.exact_match_samples={exact_match_samples!r} must be a whole number >= 0 (0: no exact match)."
            )
        self.exact_match_samples = exact_match_samples
        self.val_exact_match = MeanMetric()
        self._em_left = 0  # samples still to decode in this validation
        self._em_updates = 0
        self._preview: list[tuple[list[int], list[int], list[int]]] = []  # (prompt, prediction, reference)
        self.eos_id: int | None = None

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> SFTBatches:
        self.eos_id = special_ids["eos"]  # where exact-match decoding stops: the id of the eos the batches end with
        return SFTBatches(block_len=seq_len, eos_id=special_ids["eos"], pad_id=special_ids["pad"])

    def batch_tokens(self, batch) -> int:
        return int(batch.get("num_tokens", batch["input_ids"].numel()))

    def on_validation_epoch_start(self) -> None:
        self._em_left = self.exact_match_samples
        self._preview = []

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def eval_step(self, batch, batch_idx: int, stage: str) -> None:
        super().eval_step(batch, batch_idx, stage)
        if self._em_left > 0 and "response_start" in batch and self.eos_id is not None:
            self._exact_match(batch)

    def _exact_match(self, batch) -> None:
        """Greedy-decode the batch's first rows from their prompts; rows with the same prompt length decode
        together (no left padding needed)."""
        n = min(self._em_left, batch["input_ids"].size(0))
        self._em_left -= n
        ids, mask, start = batch["input_ids"][:n], batch["attention_mask"][:n], batch["response_start"][:n]
        lengths = mask.sum(dim=1)
        assert self.eos_id is not None
        for p in start.unique().tolist():
            rows = (start == p).nonzero().flatten()
            refs = [ids[r, p : lengths[r]].tolist() for r in rows]
            out = generation.sample(
                self.net, ids[rows, :p], max(map(len, refs)), temperature=0.0, stop_ids=[self.eos_id]
            )
            for r, ref, gen in zip(rows.tolist(), refs, out[:, p:].tolist()):
                self.val_exact_match.update(torch.tensor(float(matches(gen, ref))))
                if len(self._preview) < 8:
                    cut = gen[: gen.index(self.eos_id)] if self.eos_id in gen else gen
                    self._preview.append((ids[r, :p].tolist(), cut, ref[:-1]))
        self._em_updates += 1

    def on_eval_epoch_end(self, stage: str) -> None:
        super().on_eval_epoch_end(stage)
        if self._em_updates:
            self.log(f"{stage}/exact_match", self.val_exact_match.compute(), prog_bar=True, sync_dist=False)
            self.val_exact_match.reset()
            self._em_updates = 0

    def sample_texts(self, tokenizer, num_samples: int = 3, prompt: str = "", **kwargs: Any) -> list[str]:  # type: ignore[override]
        """Validation prompts with the greedy response and the reference (from the last validation); plain
        continuations (CausalLM's) when there are none, e.g. with stream data."""
        if not self._preview:
            return super().sample_texts(tokenizer, num_samples=num_samples, prompt=prompt, **kwargs)
        return [
            f"prompt:     {tokenizer.decode(p)}\nprediction: {tokenizer.decode(g)}\nreference:  {tokenizer.decode(r)}"
            for p, g, r in self._preview[:num_samples]
        ]
