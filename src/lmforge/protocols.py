"""The contracts between lmforge's parts, written down: what a net, a batch builder, a data module and
a callback that reports into summary.json must provide. Each part is checked against these by mypy
(structural typing: nothing needs to inherit from them) and, where it is cheap, at run time with
`isinstance(x, Proto)` (`runtime_checkable`), instead of `hasattr` probing scattered through the code.

Adding a model family, an objective or a data source means implementing the protocol here that its
part plays; nothing else in lmforge needs to learn about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn


@runtime_checkable
class Net(Protocol):
    """A model family's plain `nn.Module` (models/<family>.py): token ids in, logits out.

    `config` is the family's dataclass; `config_dict()` its keyword arguments, enough to rebuild the net
    (`type(net)(**net.config_dict())`: export and checkpoints rely on it).
    """

    config: Any

    def init_weights(self) -> None:
        """(Re)draw every parameter from the global RNG: also materialises a net built on the meta device."""
        ...

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in order: the units lmforge.parallel shards, checkpoints and compiles."""
        ...

    def config_dict(self) -> dict[str, Any]: ...

    @property
    def max_seq_len(self) -> int: ...

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        """Matmul FLOPs of one forward on `batch` (what FlopCounterMode counts); None if the batch lacks a shape.
        A function of the batch's tensor shapes only: the throughput callback counts each shape once."""
        ...


@runtime_checkable
class BatchBuilder(Protocol):
    """Made by an objective: how many stream tokens one example uses, and how blocks become a batch.

    `rng` is a generator seeded per batch by the loader (from the data seed and the blocks' indices), so
    batches are the same for a seed, with any number of workers and after a resume. A builder that needs
    no randomness ignores it.
    """

    block_len: int

    def for_split(self, split: str) -> BatchBuilder:
        """The variant for "train" or "val" (e.g. validation masks fixed by content); often `self`."""
        ...

    def __call__(self, blocks: list[np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class SeparatesDocuments(Protocol):
    """A batch builder that can keep the documents packed into a block apart (`data.document_mask=true`): no token
    attends across an eos and positions restart per document. The data module asks for it explicitly; a builder
    without this method (an encoder's) cannot, and the run stops before compute."""

    def with_document_mask(self) -> BatchBuilder: ...


@runtime_checkable
class SummarySection(Protocol):
    """A callback that owns a section of summary.json (`summary_key`); an empty dict writes nothing."""

    summary_key: str

    def summary(self) -> dict[str, Any]: ...


@runtime_checkable
class EndsRunOnPurpose(Protocol):
    """A callback that may stop training on purpose (e.g. Optuna pruning); its `final_status` ("pruned")
    becomes the run's status in summary.json instead of "completed". None while the run goes on."""

    final_status: str | None


@runtime_checkable
class RunData(Protocol):
    """What lmforge.train needs from a data module, beyond LightningDataModule: built before the model (the
    vocabulary sizes the embeddings), then given the objective's batch builder."""

    tokenizer: Any
    tokenizer_path: Path | None  # the tokenizer.json build() made or found; copied into the run folder

    def build(self, specials: dict[str, str]) -> None: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_ids(self) -> dict[str, int]: ...

    def set_batch_builder(self, builder: BatchBuilder) -> None: ...

    @property
    def block_len(self) -> int:
        """Corpus tokens one example uses, once the batch builder is set: what token budgets count."""
        ...

    def summary_facts(self) -> dict[str, Any]:
        """The summary.json sections about the data: {"data": {corpus, train_tokens, val_tokens, vocab_size},
        "baseline": {unigram_val_loss}}."""
        ...

    @property
    def block_builder(self) -> BatchBuilder | None:
        """The batch builder when every batch is made from stream blocks of `block_len` tokens (so one batch of
        blocks has the shapes of all: the pre-run forecast counts FLOPs on it); None for data served otherwise
        (padded seq2seq pairs), said up front rather than found by trying."""
        ...


@runtime_checkable
class CausalNet(Protocol):
    """A decoder-only net as lmforge.generation.sample drives it: called with token ids, logits (batch, time,
    vocab) back; with `use_cache`, also the KV cache to pass back as `past_key_values` with only the new tokens.
    `attn_mask` (batch, 1, time, time), a boolean "may attend" replacing the causal mask for a call without a
    cache (lmforge.models.masks: a prefix LM's prompt)."""

    @property
    def max_seq_len(self) -> int: ...

    def __call__(
        self,
        input_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> Any: ...


@runtime_checkable
class EncoderDecoderNet(Protocol):
    """An encoder-decoder net as lmforge.generation's greedy and beam search drive it. `config` has
    `decoder_start_token_id` (the first decoder input) and `pad_token_id` (after a row's eos)."""

    config: Any

    @property
    def max_seq_len(self) -> int: ...

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> Any:
        """Logits (batch, time, vocab); with `use_cache`, (logits, cache) and only new tokens on later calls."""
        ...

    def reorder_cache(self, cache: Any, index: torch.Tensor) -> Any:
        """The cache with its batch rows picked by `index` (beam search follows its surviving beams)."""
        ...


@runtime_checkable
class NeedsTokenizer(Protocol):
    """An objective that uses the tokenizer beyond building batches (seq2seq decodes its predictions to text for
    BLEU). lmforge.train hands both over explicitly, once, before training."""

    def bind_tokenizer(self, tokenizer: Any, special_ids: dict[str, int]) -> None: ...


@runtime_checkable
class MakesPairBatches(Protocol):
    """A batch builder that can also collate supervised (source, target) pairs (data=pairs): seq2seq's. The pairs
    data module asks it for a collator with its length limits and the source length of an average example
    (`block_len`, for token budgets)."""

    def pair_collator(self, max_source_len: int, max_target_len: int, block_len: int = 0) -> BatchBuilder: ...


@runtime_checkable
class MakesInstructionBatches(Protocol):
    """A batch builder that can also collate instruction examples (data=instructions): the SFT objective's. The
    instructions data module hands the collator `InstructionExample`s (lmforge.data.instructions: token ids, which
    of them are trained on, where the last response starts) and tells it the tokens of an average example
    (`block_len`, for token budgets)."""

    def instruction_collator(self, block_len: int) -> BatchBuilder: ...


@runtime_checkable
class HasTestSplit(Protocol):
    """A data module that can hold a test split (data.test_fraction / data.test_path): `has_test` says whether this
    one does, once built, and `test_dataloader()` serves it. lmforge.train tests the best checkpoint on it after fit
    (test=auto|true); `python -m lmforge.evaluate` scores a finished run on it."""

    @property
    def has_test(self) -> bool: ...

    def test_dataloader(self) -> Any: ...


@runtime_checkable
class MakesClassificationBatches(Protocol):
    """A batch builder that can also collate labelled sequences (data=classification): the classification
    objective's. Items have `.a` and `.b` (token id arrays, `.b` None for single texts) and `.label` (an int id); the
    builder lays them out as its family reads them (`[CLS] A [SEP] B [SEP]` with token types 0/1 for an encoder,
    `A eos B eos` for a decoder), truncated to `max_len` tokens. `block_len`: tokens of an average example."""

    def classification_collator(self, max_len: int, block_len: int = 0) -> BatchBuilder: ...


@runtime_checkable
class LabelledData(Protocol):
    """A data module of labelled sequences: the label set, read from the training file, in id order, and how often
    each label occurs in training (class weights). lmforge.train sizes the classifier with it and saves it with the
    run (labels.json)."""

    @property
    def labels(self) -> list[str]: ...

    @property
    def train_label_counts(self) -> list[int]: ...


@runtime_checkable
class NeedsLabels(Protocol):
    """An objective that needs the label set (a classifier: class weights, metrics, exports' id2label). lmforge.train
    hands it over once, before training; the objective keeps it in its checkpoints."""

    def bind_labels(self, labels: list[str], train_counts: list[int]) -> None: ...
