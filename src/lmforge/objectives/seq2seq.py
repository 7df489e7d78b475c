"""Sequence-to-sequence (T5): span corruption on the token stream, or supervised (source, target)
pairs; teacher forcing; greedy and beam decoding with the KV cache; BLEU on validation pairs.

Span corruption follows the T5 paper (Raffel et al. 2020, section 3.1.4) and Hugging Face's
`DataCollatorForT5MLM`: a block of raw stream tokens is cut into alternating kept and noise spans
(noise density 0.15, mean noise span 3); each noise span becomes one sentinel `<extra_id_k>` in the
input, and the target lists `<extra_id_k>` followed by the dropped tokens, span by span. The raw
block length is chosen so the corrupted input is `data.seq_len` tokens (eos included), so packed
examples need no padding.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torchmetrics.text import SacreBLEUScore

from lmforge import generation
from lmforge.errors import ConfigError
from lmforge.models.t5 import shift_right
from lmforge.objectives.base import LMObjective
from lmforge.objectives.losses import IGNORE_INDEX, token_cross_entropy

NUM_SENTINELS = 100  # <extra_id_0> .. <extra_id_99>, as T5's vocabulary
VAL_SEED = 20240


# ------------------------------------------------------------------ span corruption


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a block of `length` tokens; at least one of each, as HF."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(min(num_noise, length - num_noise) / mean_noise_span_length)), 1)
    return num_noise, num_spans


def corrupted_lengths(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(input length, target length) after corrupting `length` tokens, each with its eos."""
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def raw_length_for(input_len: int, noise_density: float, mean_noise_span_length: float) -> int:
    """The longest raw block whose corrupted input fits `input_len` tokens (HF's
    `compute_input_and_target_lengths`). Inputs then fill `input_len` exactly, or one short where
    one more raw token would add a whole span (sentinel + token)."""
    raw = 2
    if corrupted_lengths(raw, noise_density, mean_noise_span_length)[0] > input_len:
        raise ConfigError(f"data.seq_len={input_len} is too short for span corruption; give at least 4.")
    while corrupted_lengths(raw + 1, noise_density, mean_noise_span_length)[0] <= input_len:
        raw += 1
    return raw


def _segment(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Random lengths (each >= 1) of `n_segments` pieces that sum to `n_items`."""
    first = np.zeros(n_items, dtype=bool)
    first[1:] = rng.permutation(n_items - 1) < n_segments - 1
    return np.bincount(np.cumsum(first))


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """Bool (length,): True on noise. Kept and noise spans alternate, starting with a kept one."""
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    lengths = np.stack([_segment(length - num_noise, num_spans, rng), _segment(num_noise, num_spans, rng)], axis=1)
    span_start = np.zeros(length, dtype=np.int64)
    span_start[np.cumsum(lengths.reshape(-1))[:-1]] = 1
    return np.cumsum(span_start) % 2 == 1


def replace_spans(tokens: np.ndarray, drop: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """Each run of `drop` positions becomes one sentinel, numbered in order; other tokens stay."""
    starts = drop & ~np.concatenate([[False], drop[:-1]])
    out = tokens.copy()
    out[starts] = sentinel_ids[np.cumsum(starts)[starts] - 1]
    return out[~drop | starts]


def uncorrupt(inputs: list[int], targets: list[int], sentinel_ids) -> list[int]:
    """The original tokens from corrupted inputs and targets (both without their final eos)."""
    number = {int(s): k for k, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets:
        if t in number:
            current = spans.setdefault(number[t], [])
        elif current is not None:
            current.append(t)
    out: list[int] = []
    for t in inputs:
        out.extend(spans.get(number[t], []) if t in number else [t])
    return out


@dataclass
class PairBatches:
    """Supervised (source, target) pairs: eos appended, truncated to the limits, padded to the
    longest in the batch (dynamic padding). Padded labels are -100. Items need `.source`, `.target`
    (token id arrays) and `.target_text` (the raw reference, or None); the references ride along
    as `target_text` for BLEU."""

    pad_id: int
    eos_id: int
    decoder_start_id: int
    max_source_len: int
    max_target_len: int
    block_len: int = 0  # source tokens of an average example (token budgets), from the pairs data module

    def for_split(self, split: str) -> PairBatches:
        return self  # padding and truncation draw nothing

    def __call__(self, pairs, rng: np.random.Generator | None = None) -> dict[str, Any]:
        src = [np.append(np.asarray(p.source[: self.max_source_len - 1], dtype=np.int64), self.eos_id) for p in pairs]
        tgt = [np.append(np.asarray(p.target[: self.max_target_len - 1], dtype=np.int64), self.eos_id) for p in pairs]
        input_ids = torch.full((len(pairs), max(map(len, src))), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(pairs), max(map(len, tgt))), IGNORE_INDEX, dtype=torch.long)
        for i, (s, t) in enumerate(zip(src, tgt)):
            input_ids[i, : len(s)] = torch.from_numpy(s)
            attention_mask[i, : len(s)] = 1
            labels[i, : len(t)] = torch.from_numpy(t)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.decoder_start_id, self.pad_id),
        }
        texts = [getattr(p, "target_text", None) for p in pairs]
        if all(t is not None for t in texts):
            batch["target_text"] = texts
        return batch


@dataclass
class SpanCorruptionBatches:
    """Blocks of `block_len` stream tokens -> (input_len, target_len) span-corrupted examples."""

    block_len: int
    input_len: int
    target_len: int
    eos_id: int
    pad_id: int
    decoder_start_id: int
    sentinel_ids: np.ndarray
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    seed: int | None = None  # None: fresh spans per call (training); an int: fixed by the contents (val)

    def for_split(self, split: str) -> SpanCorruptionBatches:
        return self if split == "train" else replace(self, seed=VAL_SEED)

    def pair_collator(self, max_source_len: int, max_target_len: int, block_len: int = 0) -> PairBatches:
        return PairBatches(
            self.pad_id, self.eos_id, self.decoder_start_id, max_source_len, max_target_len, block_len=block_len
        )

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        stacked = np.stack(blocks).astype(np.int64)
        if self.seed is not None:  # validation: fixed by the contents, whatever the loader's seed
            rng = np.random.default_rng([self.seed, zlib.crc32(stacked.tobytes())])
        elif rng is None:  # no per-batch generator from the loader: the global RNG (seeded by Lightning)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        inputs, targets = [], []
        for tokens in stacked:
            noise = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_noise_span_length, rng)
            inputs.append(np.append(replace_spans(tokens, noise, self.sentinel_ids), self.eos_id))
            targets.append(np.append(replace_spans(tokens, ~noise, self.sentinel_ids), self.eos_id))
        input_ids, labels = torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.decoder_start_id, self.pad_id),
        }


# ------------------------------------------------------------------ the objective


class Seq2SeqLM(LMObjective):
    name = "seq2seq"
    # `pad` first so a trained tokenizer gives it id 0, as T5 (which also starts decoding with it).
    special_tokens = {
        "pad": "<pad>",
        "eos": "</s>",
        "unk": "<unk>",
        **{f"sentinel_{i}": f"<extra_id_{i}>" for i in range(NUM_SENTINELS)},
    }
    net: Any  # an encoder-decoder family's net (protocols.Net and protocols.EncoderDecoderNet)
    logged_metrics = (*LMObjective.logged_metrics, "val/bleu")  # val/bleu: when pairs give references

    def __init__(
        self,
        net,
        optimizer,
        scheduler=None,
        init_from: str | None = None,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        num_beams: int = 1,
        max_new_tokens: int = 64,
        length_penalty: float = 1.0,
        **kwargs,  # LMObjective's: scale_options, run_config
    ):
        super().__init__(net, optimizer, scheduler, init_from=init_from, **kwargs)
        if not 0 < noise_density < 1:
            raise ConfigError(f"model.noise_density={noise_density} must be between 0 and 1 (T5: 0.15).")
        if mean_noise_span_length < 1:
            raise ConfigError(f"model.mean_noise_span_length={mean_noise_span_length} must be >= 1 (T5: 3).")
        if num_beams < 1 or max_new_tokens < 1:
            raise ConfigError(f"model.num_beams={num_beams} and model.max_new_tokens={max_new_tokens} must be >= 1.")
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.num_beams, self.max_new_tokens, self.length_penalty = num_beams, max_new_tokens, length_penalty
        self.val_bleu = SacreBLEUScore(tokenize="13a")  # sacreBLEU's default tokenization
        self._bleu_updates = 0
        self.tokenizer: Any = None  # from bind_tokenizer: BLEU decodes predictions to text
        self.eos_id: int | None = None  # from bind_tokenizer: where decoding stops
        self._preview: dict | None = None

    def bind_tokenizer(self, tokenizer: Any, special_ids: dict[str, int]) -> None:
        """The tokenizer (None: no BLEU) and its special ids, which decoding and BLEU need (protocols.NeedsTokenizer:
        lmforge.train calls this before training)."""
        self.tokenizer, self.eos_id = tokenizer, special_ids["eos"]

    @classmethod
    def net_token_ids(cls, special_ids: dict[str, int]) -> dict[str, int]:
        return {"pad_token_id": special_ids["pad"], "decoder_start_token_id": special_ids["pad"]}

    @classmethod
    def hf_post_processor(cls, tokenizer):
        """For exported tokenizers: encode appends </s>, as T5's does."""
        from tokenizers.processors import TemplateProcessing

        e = cls.special_tokens["eos"]
        return TemplateProcessing(
            single=f"$A {e}", pair=f"$A {e} $B:1 {e}:1", special_tokens=[(e, tokenizer.token_to_id(e))]
        )

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> SpanCorruptionBatches:
        raw = raw_length_for(seq_len, self.noise_density, self.mean_noise_span_length)
        input_len, target_len = corrupted_lengths(raw, self.noise_density, self.mean_noise_span_length)
        spans = span_counts(raw, self.noise_density, self.mean_noise_span_length)[1]
        if spans > NUM_SENTINELS:
            raise ConfigError(
                f"data.seq_len={seq_len} gives {spans} noise spans per example, more than the "
                f"{NUM_SENTINELS} sentinel tokens; lower data.seq_len or raise "
                "model.mean_noise_span_length."
            )
        return SpanCorruptionBatches(
            block_len=raw,
            input_len=input_len,
            target_len=target_len,
            eos_id=special_ids["eos"],
            pad_id=special_ids["pad"],
            decoder_start_id=self.net.config.decoder_start_token_id,
            sentinel_ids=np.asarray([special_ids[f"sentinel_{i}"] for i in range(NUM_SENTINELS)], dtype=np.int64),
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
        )

    def loss(self, batch):
        labels = batch["labels"]
        dec = batch.get("decoder_input_ids")
        if dec is None:
            c = self.net.config
            dec = shift_right(labels, c.decoder_start_token_id, c.pad_token_id)
        return token_cross_entropy(self.net(batch["input_ids"], batch.get("attention_mask"), dec), labels)

    def eval_step(self, batch, batch_idx: int, stage: str) -> None:
        super().eval_step(batch, batch_idx, stage)
        if batch_idx == 0 and stage == "val":
            self._preview = {k: (v[:8].detach().cpu() if torch.is_tensor(v) else v[:8]) for k, v in batch.items()}
        if "target_text" in batch and self.tokenizer is not None:
            pred = self.generate(batch["input_ids"], batch["attention_mask"])
            texts = self.tokenizer.decode_batch(pred.tolist(), skip_special_tokens=True)
            self.val_bleu.update([t.strip() for t in texts], [[r.strip()] for r in batch["target_text"]])
            self._bleu_updates += 1

    def on_eval_epoch_end(self, stage: str) -> None:
        super().on_eval_epoch_end(stage)
        if self._bleu_updates:
            self.log(f"{stage}/bleu", 100 * self.val_bleu.compute(), sync_dist=False)  # sacreBLEU's 0-100 scale
            self.val_bleu.reset()
            self._bleu_updates = 0

    # -- decoding --
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        eos_id: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Decoded target ids (batch, <= max_new_tokens), without the start token; rows end with eos (unless cut
        by the length) and are padded after it. Greedy with num_beams=1, else beam search; see lmforge.generation.
        Unset arguments come from the objective's config (model.num_beams, ...) and bind_tokenizer (eos)."""
        max_new = max_new_tokens or self.max_new_tokens
        k = num_beams or self.num_beams
        eos = self.eos_id if eos_id is None else eos_id
        if k == 1:
            return generation.greedy(self.net, input_ids, attention_mask, max_new, eos, use_cache)
        lp = self.length_penalty if length_penalty is None else length_penalty
        return generation.beam_search(self.net, input_ids, attention_mask, max_new, k, lp, eos, use_cache)

    # -- samples --
    def _cut(self, ids: list[int], eos: int | None = None) -> list[int]:
        """A generated sequence up to its first eos (by default the bound one)."""
        eos = self.eos_id if eos is None else eos
        return ids[: ids.index(eos)] if eos in ids else ids

    def _strip(self, ids: list[int], eos: int | None = None) -> list[int]:
        """An example without its final eos (eos inside a span-corrupted block separates documents)."""
        eos = self.eos_id if eos is None else eos
        return ids[:-1] if ids and ids[-1] == eos else ids

    def sample_texts(self, tokenizer, num_samples: int = 3, prompt: str = "", **_: Any) -> list[str]:
        """Corrupted validation inputs with the predicted and true spans; for pairs, source,
        prediction and reference. A `prompt` (with <extra_id_0> for span filling) is decoded too."""
        out = []
        eos = tokenizer.token_to_id(self.special_tokens["eos"]) if self.eos_id is None else self.eos_id
        if prompt:
            ids = tokenizer.encode(prompt, add_special_tokens=False).ids + [eos]
            decoded = self.generate(torch.tensor([ids], device=self.device), eos_id=eos)[0].tolist()
            predicted = tokenizer.decode(self._cut(decoded, eos), skip_special_tokens=False)
            out.append(f"input:     {prompt}\npredicted: {predicted}")
        if self._preview is None:
            return out
        n = min(num_samples, self._preview["input_ids"].size(0))
        x, mask = self._preview["input_ids"][:n], self._preview["attention_mask"][:n]
        pred = self.generate(
            x.to(self.device), mask.to(self.device), max_new_tokens=self._preview["labels"].size(1) + 8, eos_id=eos
        )
        pairs = "target_text" in self._preview
        for i in range(n):
            src = self._strip(x[i][mask[i].bool()].tolist(), eos)
            p = self._cut(pred[i].tolist(), eos)
            t = self._strip([v for v in self._preview["labels"][i].tolist() if v != IGNORE_INDEX], eos)
            if pairs:
                out.append(
                    f"source:     {tokenizer.decode(src)}\nprediction: {tokenizer.decode(p)}\n"
                    f"reference:  {self._preview['target_text'][i]}"
                )
            else:
                out.append(
                    f"input:     {tokenizer.decode(src, skip_special_tokens=False)}\n"
                    f"predicted: {tokenizer.decode(p, skip_special_tokens=False)}\n"
                    f"target:    {tokenizer.decode(t, skip_special_tokens=False)}"
                )
        return out
