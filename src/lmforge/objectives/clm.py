"""Causal language modelling (GPT): packed blocks, next-token loss, sampling with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.objectives.base import LMObjective

IGNORE_INDEX = -100


@dataclass
class PackedCausalBatches:
    """Documents are packed back to back (separated by eos) into blocks of `block_len` tokens.

    As in Hugging Face, `labels` equal `input_ids`; the loss shifts them by one.
    """

    block_len: int

    def for_split(self, split: str) -> PackedCausalBatches:
        return self  # packing draws nothing: validation batches are built as training's

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.stack(blocks)).long()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of predicting labels[t+1] from position t; -100 labels are ignored."""
    targets = labels[:, 1:]
    n = int((targets != IGNORE_INDEX).sum())
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    return loss, n


class CausalLM(LMObjective):
    name = "clm"
    special_tokens = {"eos": "<|endoftext|>"}

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> PackedCausalBatches:
        return PackedCausalBatches(block_len=seq_len)

    def loss(self, batch):
        return next_token_loss(self.net(batch["input_ids"]), batch["labels"])

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue `input_ids` (batch, time). temperature 0 is greedy. Stops at the model's context."""
        max_new_tokens = min(max_new_tokens, self.net.max_seq_len - input_ids.size(1))
        out, cache, step_input = input_ids, None, input_ids
        for _ in range(max(0, max_new_tokens)):
            if use_cache:
                logits, cache = self.net(step_input, past_key_values=cache, use_cache=True)
            else:
                logits = self.net(out)
            nxt = sample_next(logits[:, -1].float(), temperature, top_k, generator)
            out = torch.cat([out, nxt], dim=1)
            step_input = nxt
        return out

    def sample_texts(
        self,
        tokenizer,
        num_samples: int = 3,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 50,
        prompt: str = "",
        seed: int = 0,
        **_,
    ) -> list[str]:
        eos = tokenizer.token_to_id(self.special_tokens["eos"])
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        start = torch.tensor([[eos] + ids] * num_samples, device=self.device)  # start as a fresh document
        was_training = self.training
        self.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = self.generate(start, max_new_tokens, temperature, top_k, generator=gen)
        self.train(was_training)
        return [prompt + tokenizer.decode(row[start.size(1) :].tolist()) for row in out]


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row from the last-position logits (batch, vocab)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
