"""Masked language modelling (BERT): dynamic masking at collate time, loss on masked positions only,
masked-token accuracy, and fill-mask predictions as samples.

Examples are `[CLS] block [SEP]` where the block is a run of the token stream (documents packed back
to back, separated by `[SEP]`, as BERT's pretraining data). A fresh mask is drawn every time a block is
collated (RoBERTa's dynamic masking); validation masks are fixed by the batch contents, so `val/loss`
and `val/acc` compare across evaluations and checkpoints.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy

from lmforge import generation
from lmforge.errors import ConfigError
from lmforge.objectives.base import LMObjective
from lmforge.objectives.losses import IGNORE_INDEX, token_cross_entropy

VAL_SEED = 20240  # validation masks: fixed per batch contents


@dataclass
class MaskedLMBatches:
    """Collates blocks of `block_len` stream tokens into MLM examples of `block_len + 2` tokens.

    A share `mask_prob` of the maskable tokens of each row is chosen (exactly, rounded; at least one);
    of those, `mask_token_prob` become `[MASK]`, `random_token_prob` a random ordinary token, the rest
    stay. Special tokens are never chosen and never drawn as random replacements.

    Whole-word masking: with `joins_previous`/`joinable` (bool tables over the vocabulary, see
    `word_tables`), token i continues the word of token i-1 when `joins_previous[ids[i]]` and
    `joinable[ids[i-1]]`; words are then chosen as units, so a word is masked whole or not at all.
    """

    block_len: int
    cls_id: int
    sep_id: int
    mask_id: int
    never_mask: torch.Tensor  # ids of every special token
    replacement_ids: torch.Tensor  # ids a random replacement is drawn from
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    joins_previous: torch.Tensor | None = None
    joinable: torch.Tensor | None = None
    seed: int | None = None  # None: a fresh mask per call (training); an int: masks fixed by the contents (val)

    def for_split(self, split: str) -> MaskedLMBatches:
        return self if split == "train" else replace(self, seed=VAL_SEED)

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        body = torch.from_numpy(np.stack(blocks)).long()
        b = body.size(0)
        ids = torch.cat([body.new_full((b, 1), self.cls_id), body, body.new_full((b, 1), self.sep_id)], dim=1)
        gen = self._generator(body, rng)
        chosen = self.choose(ids, gen)
        return {
            "input_ids": self.corrupt(ids, chosen, gen),
            "attention_mask": torch.ones_like(ids),
            "labels": ids.masked_fill(~chosen, IGNORE_INDEX),
        }

    def _generator(self, body: torch.Tensor, rng: np.random.Generator | None) -> torch.Generator:
        gen = torch.Generator()
        if self.seed is not None:  # validation: fixed by the contents, whatever the loader's seed
            gen.manual_seed(self.seed * 2**32 + zlib.crc32(body.numpy().tobytes()))
        elif rng is not None:  # the loader's per-batch generator: the same masks for a seed, also after a resume
            gen.manual_seed(int(rng.integers(0, 2**62)))
        else:  # the global RNG, which Lightning seeds per process and worker
            gen.manual_seed(int(torch.randint(0, 2**62, ())))
        return gen

    def word_starts(self, ids: torch.Tensor, maskable: torch.Tensor) -> torch.Tensor:
        """True where a maskable unit (a token, or a whole word) begins."""
        if self.joins_previous is None or self.joinable is None:
            return torch.ones_like(maskable)
        starts = torch.ones_like(maskable)
        starts[:, 1:] = ~(self.joins_previous[ids[:, 1:]] & self.joinable[ids[:, :-1]] & maskable[:, :-1])
        return starts | ~maskable

    def choose(self, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The positions to predict: whole units in random order until `mask_prob` of the row is covered."""
        maskable = ~torch.isin(ids, self.never_mask)
        unit = self.word_starts(ids, maskable).long().cumsum(dim=1)  # unit number of each token
        score = torch.rand(ids.size(0), ids.size(1) + 1, generator=gen).gather(1, unit)  # one draw per unit
        score = score.masked_fill(~maskable, 2.0)  # never chosen: sorted after every maskable token
        order = score.argsort(dim=1, stable=True)  # units stay contiguous, in position order
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(ids.size(1)).expand_as(order))
        first = torch.full((ids.size(0), ids.size(1) + 1), ids.size(1), dtype=torch.long)
        first.scatter_reduce_(1, unit, rank, reduce="amin")  # rank of each unit's first token
        n_maskable = maskable.sum(dim=1, keepdim=True)
        budget = (n_maskable * self.mask_prob).round().clamp(min=1).minimum(n_maskable)
        return (first.gather(1, unit) < budget) & maskable

    def corrupt(self, ids: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        r = torch.rand(ids.shape, generator=gen)
        to_mask = chosen & (r < self.mask_token_prob)
        to_random = chosen & (r >= self.mask_token_prob) & (r < self.mask_token_prob + self.random_token_prob)
        random_ids = self.replacement_ids[torch.randint(len(self.replacement_ids), ids.shape, generator=gen)]
        return torch.where(to_random, random_ids, ids.masked_fill(to_mask, self.mask_id))


def word_tables(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(joins_previous, joinable) over the vocabulary, for whole-word masking.

    WordPiece marks continuations explicitly (`##ing`). Byte-level BPE, Unigram (metaspace) and
    character vocabularies mark word *starts* with a leading space (`Ġ`, `▁`, ` `); there a token
    continues a word when it starts with a letter or digit and the token before ends with one (or is
    a bare space marker).
    """
    vocab = tokenizer.get_vocab()
    n = max(vocab.values()) + 1
    joins, joinable = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    prefix = getattr(tokenizer.model, "continuing_subword_prefix", None)
    wordpiece = type(tokenizer.model).__name__ == "WordPiece"
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    for token, i in vocab.items():
        if token in specials:
            continue
        if wordpiece:
            joins[i], joinable[i] = bool(prefix) and token.startswith(prefix), True
        else:
            surface = token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")
            # A bare word-start marker ("Ġ") belongs to the word that follows it.
            joins[i], joinable[i] = surface[:1].isalnum(), surface[-1:].isalnum() or surface.isspace()
    return joins, joinable


def special_ids_of(tokenizer) -> list[int]:
    return sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)


class MaskedLM(LMObjective):
    name = "mlm"
    # Roles -> tokens. `pad` first, so a trained tokenizer gives it id 0 as BERT's; `eos` ([SEP])
    # separates documents in the token stream; `sep` names it for tokenizers that add [CLS] .. [SEP].
    special_tokens = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "eos": "[SEP]", "sep": "[SEP]", "mask": "[MASK]"}
    net: Any  # an encoder family's net (protocols.Net); its config has the vocabulary size
    logged_metrics = (*LMObjective.logged_metrics, "val/acc")

    def __init__(
        self,
        net,
        optimizer,
        scheduler=None,
        init_from: str | None = None,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        whole_word_mask: bool = False,
        **kwargs,  # LMObjective's: scale_options, run_config
    ):
        super().__init__(net, optimizer, scheduler, init_from=init_from, **kwargs)
        if not 0 < mask_prob < 1:
            raise ConfigError(f"model.mask_prob={mask_prob} must be between 0 and 1 (exclusive); BERT uses 0.15.")
        if not (0 <= mask_token_prob and 0 <= random_token_prob and mask_token_prob + random_token_prob <= 1):
            raise ConfigError(
                f"model.mask_token_prob={mask_token_prob} and model.random_token_prob="
                f"{random_token_prob} must be >= 0 and sum to at most 1 (BERT: 0.8 and 0.1)."
            )
        self.mask_prob, self.mask_token_prob, self.random_token_prob = mask_prob, mask_token_prob, random_token_prob
        self.whole_word_mask = whole_word_mask
        self.val_acc = MulticlassAccuracy(
            num_classes=net.config.vocab_size, average="micro", ignore_index=IGNORE_INDEX, validate_args=False
        )
        self._preview: dict[str, torch.Tensor] | None = None  # the first validation rows, for samples

    @classmethod
    def net_token_ids(cls, special_ids: dict[str, int]) -> dict[str, int]:
        return {"pad_token_id": special_ids["pad"]}

    @classmethod
    def hf_post_processor(cls, tokenizer):
        """For exported tokenizers: encode adds [CLS] ... [SEP], as BERT's do."""
        from tokenizers.processors import TemplateProcessing

        c, s = cls.special_tokens["cls"], cls.special_tokens["eos"]
        return TemplateProcessing(
            single=f"{c} $A {s}",
            pair=f"{c} $A {s} $B:1 {s}:1",
            special_tokens=[(c, tokenizer.token_to_id(c)), (s, tokenizer.token_to_id(s))],
        )

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None) -> MaskedLMBatches:
        if seq_len < 3:
            raise ConfigError(f"data.seq_len={seq_len}: an MLM example is [CLS] block [SEP]; give at least 3.")
        vocab = self.net.config.vocab_size
        never = set(special_ids.values())
        if tokenizer is not None:
            vocab = tokenizer.get_vocab_size()
            never |= set(special_ids_of(tokenizer))
        joins = joinable = None
        if self.whole_word_mask:
            if tokenizer is None:
                raise ConfigError("model.whole_word_mask=true needs the tokenizer to find word boundaries.")
            joins, joinable = word_tables(tokenizer)
        never_t = torch.tensor(sorted(never), dtype=torch.long)
        replacement = torch.tensor([i for i in range(vocab) if i not in never], dtype=torch.long)
        return MaskedLMBatches(
            block_len=seq_len - 2,
            cls_id=special_ids["cls"],
            sep_id=special_ids["eos"],
            mask_id=special_ids["mask"],
            never_mask=never_t,
            replacement_ids=replacement,
            mask_prob=self.mask_prob,
            mask_token_prob=self.mask_token_prob,
            random_token_prob=self.random_token_prob,
            joins_previous=joins,
            joinable=joinable,
        )

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))

    def loss(self, batch):
        # Over the masked positions only: the others are IGNORE_INDEX.
        return token_cross_entropy(self.logits(batch), batch["labels"])

    def eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        logits = self.logits(batch)
        self._eval_mlm(batch, batch_idx, stage, logits, *token_cross_entropy(logits, batch["labels"]))

    def _eval_mlm(
        self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str, logits: torch.Tensor, loss, n
    ) -> None:
        """The masked-LM part of an evaluation step: val_loss, masked-token accuracy, the samples' preview batch."""
        labels = batch["labels"]
        self.val_loss.update(loss, n)
        chosen = labels != IGNORE_INDEX
        self.val_acc.update(logits[chosen].argmax(dim=-1), labels[chosen])
        if batch_idx == 0 and stage == "val":
            self._preview = {k: v[:8].detach().cpu() for k, v in batch.items() if torch.is_tensor(v)}

    def on_eval_epoch_end(self, stage: str) -> None:
        super().on_eval_epoch_end(stage)
        self.log(f"{stage}/acc", self.val_acc.compute(), sync_dist=False)  # synced by torchmetrics
        self.val_acc.reset()

    def fill_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`input_ids` with every position predicted by the model's most likely token (on the CPU)."""
        mask = None if attention_mask is None else attention_mask.to(self.device)
        return generation.fill_mask(self.net, input_ids.to(self.device), mask).cpu()

    def sample_texts(
        self, tokenizer, num_samples: int = 3, prompt: str = "", max_new_tokens: int = 64, **_: Any
    ) -> list[str]:
        """Fill-mask on validation snippets: what the model saw, its predictions, and the original.
        A `prompt` with [MASK] in it is filled in as well."""
        out = []
        mask_tok = self.special_tokens["mask"]
        if prompt and mask_tok in prompt:
            ids = (
                [tokenizer.token_to_id(self.special_tokens["cls"])]
                + tokenizer.encode(prompt, add_special_tokens=False).ids
                + [tokenizer.token_to_id(self.special_tokens["eos"])]
            )
            x = torch.tensor([ids])
            pred = torch.where(x == tokenizer.token_to_id(mask_tok), self.fill_mask(x), x)
            out.append(f"input:     {prompt}\npredicted: {tokenizer.decode(pred[0, 1:-1].tolist())}")
        if self._preview is not None:
            n = min(num_samples, self._preview["input_ids"].size(0))
            width = max(8, min(max_new_tokens, self._preview["input_ids"].size(1)))
            x, labels = self._preview["input_ids"][:n], self._preview["labels"][:n]
            chosen = labels != IGNORE_INDEX
            mask = self._preview.get("attention_mask")
            pred = torch.where(chosen, self.fill_mask(x, None if mask is None else mask[:n]), x)
            truth = torch.where(chosen, labels, x)
            for i in range(n):
                acc = (pred[i][chosen[i]] == truth[i][chosen[i]]).float().mean().item() if chosen[i].any() else 0.0
                seen, filled, orig = (
                    tokenizer.decode(t[i, 1:width].tolist(), skip_special_tokens=False) for t in (x, pred, truth)
                )
                out.append(
                    f"input:     {seen}\npredicted: {filled}\noriginal:  {orig}\n"
                    f"({int(chosen[i].sum())} tokens masked in this example, {acc:.0%} predicted right)"
                )
        return out
