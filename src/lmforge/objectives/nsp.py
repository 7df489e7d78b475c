"""BERT pretraining with a sentence-pair task: masked LM + next-sentence prediction (BERT) or sentence-order
prediction (ALBERT), `model=bert_nsp`.

Examples are `[CLS] A [SEP] B [SEP]` with token types 0 on `[CLS] A [SEP]` and 1 on `B [SEP]`, built by the batch
builder from the blocks of the token stream the data module serves (data knows nothing of pairs):

- each block is cut into A (before) and B (after) near a random point, at a sentence end when the block has one:
  the first token of B follows a sentence-final token (one whose text ends with ".", "!", "?" or a newline; found
  once from the tokenizer's vocabulary). A block without one is cut at the random point itself.
- NSP: half of the rows keep B (label 0, "B follows A"); the others replace it by as many tokens of another block
  of the same batch, starting at a sentence start there too (label 1, "B is random"). Every block of a batch comes
  from one split, so no pair crosses the train/val split.
- SOP: half of the rows are swapped, `[CLS] B [SEP] A [SEP]` (label 1, "out of order"); both segments are always
  consecutive text of one block.

The MLM masking of objectives/mlm.py then applies to the whole pair ([CLS], [SEP] and padding never masked).
Labels follow Hugging Face's BertForPreTraining (`next_sentence_label` 0 = is next), so an exported model's
`seq_relationship_logits` mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from lmforge.errors import ConfigError
from lmforge.objectives.losses import IGNORE_INDEX, token_cross_entropy
from lmforge.objectives.mlm import MaskedLM, MaskedLMBatches

PAIR_TASKS = ("nsp", "sop")
SENTENCE_FINAL = (".", "!", "?", "\n")


def sentence_final_table(tokenizer) -> torch.Tensor:
    """Bool over the vocabulary: True for tokens whose text ends a sentence (".", "!", "?", or a newline)."""
    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    for token, i in vocab.items():
        if token in specials:
            continue
        # Byte-level BPE writes a newline as "Ċ"; metaspace/byte markers elsewhere do not end a token's text.
        surface = token.replace("Ċ", "\n").replace("Ġ", " ").replace("▁", " ").rstrip(" ")
        table[i] = surface.endswith(SENTENCE_FINAL)
    return table


def nearest_cut(ends: np.ndarray, lo: int, hi: int, point: int) -> int:
    """The cut c in [lo, hi] nearest to `point` with a sentence end just before it (`ends[c - 1]`); `point` if none.
    `ends` (length,) bool: the block's sentence-final tokens."""
    cuts = np.arange(max(lo, 1), hi + 1)
    cuts = cuts[ends[cuts - 1]]
    return int(cuts[np.abs(cuts - point).argmin()]) if cuts.size else point


@dataclass
class SentencePairBatches:
    """Collates blocks of `block_len` stream tokens into `[CLS] A [SEP] B [SEP]` examples of `block_len + 3` tokens,
    with `token_type_ids`, MLM `labels` (`mlm`'s masking) and `next_sentence_label` (batch,)."""

    mlm: MaskedLMBatches  # its masking (and its validation seed); its block_len is unused here
    block_len: int
    pair_task: str = "nsp"
    sentence_final: torch.Tensor | None = None  # bool over the vocabulary; None: cut at the random point
    min_segment: int = 1

    def for_split(self, split: str) -> SentencePairBatches:
        return replace(self, mlm=self.mlm.for_split(split))

    def _ends(self, block: np.ndarray) -> np.ndarray:
        if self.sentence_final is None:
            return np.zeros(len(block), dtype=bool)
        ids = torch.from_numpy(block).long().clamp(max=len(self.sentence_final) - 1)
        return self.sentence_final[ids].numpy()

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        body = torch.from_numpy(np.stack(blocks)).long()  # (batch, block_len)
        b, n = body.shape
        gen = self.mlm._generator(body, rng)  # fixed by the contents for validation, like the masks
        pick = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
        ends = [self._ends(block) for block in blocks]
        lo, hi = self.min_segment, n - self.min_segment
        ids, types, labels = [], [], []
        for i, block in enumerate(blocks):
            cut = nearest_cut(ends[i], lo, hi, int(pick.integers(lo, hi + 1)))
            first, second = block[:cut], block[cut:]
            label = int(pick.random() < 0.5)
            if label and self.pair_task == "sop":
                first, second = second, first
            elif label:  # nsp: as many tokens of another block of the batch, from a sentence start there
                j = (i + int(pick.integers(1, b))) % b if b > 1 else i  # a lone block: elsewhere in itself
                width = len(second)
                start = nearest_cut(ends[j], 0, n - width, int(pick.integers(0, n - width + 1)))
                if j == i and start == cut:  # the true continuation again: the block's start instead (cut >= 1)
                    start = 0
                second = blocks[j][start : start + width]
            ids.append(np.concatenate([[self.mlm.cls_id], first, [self.mlm.sep_id], second, [self.mlm.sep_id]]))
            types.append(np.r_[np.zeros(len(first) + 2, dtype=np.int64), np.ones(len(second) + 1, dtype=np.int64)])
            labels.append(label)
        x = torch.from_numpy(np.stack(ids)).long()  # (batch, block_len + 3)
        chosen = self.mlm.choose(x, gen)
        return {
            "input_ids": self.mlm.corrupt(x, chosen, gen),
            "attention_mask": torch.ones_like(x),
            "token_type_ids": torch.from_numpy(np.stack(types)),
            "labels": x.masked_fill(~chosen, IGNORE_INDEX),
            "next_sentence_label": torch.tensor(labels, dtype=torch.long),
        }


class SentencePairLM(MaskedLM):
    """Masked LM plus NSP or SOP on a BERT built with `pair_head=True`. `nsp=false` trains plain MLM (the pair head,
    if built, unused). Loss = MLM loss + pair loss; `val/loss` stays the MLM loss, comparable with model=bert."""

    name = "mlm_nsp"
    logged_metrics: ClassVar[tuple[str, ...]] = (
        *MaskedLM.logged_metrics,
        "train/mlm_loss",
        "train/nsp_loss",
        "val/nsp_loss",
        "val/nsp_acc",
    )

    def __init__(self, net, optimizer, scheduler=None, nsp: bool = True, pair_task: str = "nsp", **kwargs: Any):
        super().__init__(net, optimizer, scheduler, **kwargs)
        if pair_task not in PAIR_TASKS:
            raise ConfigError(
                f"model.pair_task={pair_task!r} is unknown: use nsp (next-sentence prediction, BERT) or sop "
                "(sentence-order prediction, ALBERT)."
            )
        if nsp and not getattr(net.config, "pair_head", False):
            raise ConfigError(
                "model.nsp=true needs the BERT pooler and pair head: set model.net.pair_head=true (model=bert_nsp "
                "does; a model.init_from folder must then hold a BertForPreTraining), or model.nsp=false for plain MLM."
            )
        self.nsp, self.pair_task = nsp, pair_task
        self.val_nsp_loss = MeanMetric()
        self.val_nsp_acc = BinaryAccuracy(validate_args=False)

    def batch_builder(self, seq_len: int, special_ids: dict[str, int], tokenizer=None):
        mlm = super().batch_builder(seq_len, special_ids, tokenizer)
        if not self.nsp:
            return mlm
        if seq_len < 5:
            raise ConfigError(
                f"data.seq_len={seq_len} is too short for a sentence pair: [CLS] A [SEP] B [SEP] needs at least one "
                "token in each segment, so data.seq_len >= 5 (BERT used 128 and 512)."
            )
        table = sentence_final_table(tokenizer) if tokenizer is not None else None
        return SentencePairBatches(mlm=mlm, block_len=seq_len - 3, pair_task=self.pair_task, sentence_final=table)

    def pair_losses(self, batch: dict[str, torch.Tensor]):
        """(mlm loss, its target count, pair logits (batch, 2), pair loss)."""
        mlm_logits, pair_logits = self.net.pretraining_logits(
            batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        )
        mlm_loss, n = token_cross_entropy(mlm_logits, batch["labels"])
        return mlm_loss, n, mlm_logits, pair_logits, F.cross_entropy(pair_logits.float(), batch["next_sentence_label"])

    def loss(self, batch):
        if not self.nsp:
            return super().loss(batch)
        mlm_loss, n, _, _, pair_loss = self.pair_losses(batch)
        return mlm_loss + pair_loss, n

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.nsp:
            return super().training_loss(batch)
        mlm_loss, _, _, _, pair_loss = self.pair_losses(batch)
        return mlm_loss + pair_loss, {"train/mlm_loss": mlm_loss.detach(), "train/nsp_loss": pair_loss.detach()}

    def eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        if not self.nsp:
            return super().eval_step(batch, batch_idx, stage)
        mlm_loss, n, mlm_logits, pair_logits, pair_loss = self.pair_losses(batch)
        # val/loss: the MLM loss alone, comparable with model=bert
        self._eval_mlm(batch, batch_idx, stage, mlm_logits, mlm_loss, n)
        target = batch["next_sentence_label"]
        self.val_nsp_loss.update(pair_loss, target.numel())
        self.val_nsp_acc.update(pair_logits.argmax(dim=-1), target)

    def on_eval_epoch_end(self, stage: str) -> None:
        super().on_eval_epoch_end(stage)
        if self.nsp:
            self.log(f"{stage}/nsp_loss", self.val_nsp_loss.compute(), sync_dist=False)  # synced by torchmetrics
            self.log(f"{stage}/nsp_acc", self.val_nsp_acc.compute(), sync_dist=False)
            self.val_nsp_loss.reset()
            self.val_nsp_acc.reset()

    def sample_texts(
        self, tokenizer, num_samples: int = 3, prompt: str = "", max_new_tokens: int = 64, **kwargs: Any
    ) -> list[str]:
        texts = super().sample_texts(tokenizer, num_samples, prompt, max_new_tokens, **kwargs)
        if self.nsp and self._preview is not None and "next_sentence_label" in self._preview:
            p = self._preview
            with torch.no_grad():
                x, mask, types = (p[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids"))
                _, logits = self.net.pretraining_logits(x, mask, types)
            pred, truth = logits.argmax(-1).cpu(), p["next_sentence_label"]
            word = ("in order", "swapped") if self.pair_task == "sop" else ("is next", "random")
            texts.append(
                f"{self.pair_task}: predicted {', '.join(word[int(x)] for x in pred)}; "
                f"true {', '.join(word[int(x)] for x in truth)} ({int((pred == truth).sum())}/{len(truth)} right)"
            )
        return texts
