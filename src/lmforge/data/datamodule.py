"""The LightningDataModule: corpus -> tokenizer -> token cache -> blocks -> objective's batches.

How examples are made from token blocks belongs to the objective (see `objectives/`); the
DataModule only cuts the token stream into blocks of the length the objective asks for and
hands lists of blocks to the objective's batch builder. The train loader is deterministic for
`data.seed`, gives each DDP rank its own share, and resumes mid-epoch (see `loading.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmforge.data.loading import BatchCollator, ResumableDataLoader, ResumableSampler, TokenBlocks
from lmforge.data.token_cache import DEFAULT_SHARD_TOKENS, TokenCache, token_dtype
from lmforge.data.tokenizer import TokenizerSpec, sample_texts, special_token_ids
from lmforge.errors import ConfigError, DataError
from lmforge.protocols import BatchBuilder, SeparatesDocuments

__all__ = ["BatchBuilder", "LMDataModule", "TokenBlocks", "data_facts"]


def data_facts(corpus_name: str, meta: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The "data" and "baseline" sections of summary.json, from a token cache's meta.json (streams and pairs alike);
    test_tokens and unigram_test_loss only when there is a test split."""
    facts: dict[str, Any] = {
        "data": {
            "corpus": corpus_name,
            "train_tokens": meta["tokens"]["train"],
            "val_tokens": meta["tokens"]["val"],
            "vocab_size": vocab_size,
        },
        "baseline": {"unigram_val_loss": meta["unigram_val_loss"]},
    }
    if "test" in meta["tokens"]:
        facts["data"]["test_tokens"] = meta["tokens"]["test"]
        facts["baseline"]["unigram_test_loss"] = meta["unigram_test_loss"]
    return facts


class LMDataModule(L.LightningDataModule):
    def __init__(
        self,
        corpus,
        tokenizer: TokenizerSpec,
        cache_dir: str,
        seq_len: int = 256,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        token_dtype: str = "auto",
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        path: str | None = None,  # the corpus location (data.path); read by `corpus` (see conf/data)
        text_field: str | None = None,  # the text field of JSONL / HF corpora; read by `corpus`
        document_mask: bool = False,  # keep packed documents apart: handed to the batch builder (set_batch_builder)
        test_fraction: float = 0.0,  # share of documents held out for a test split (0: none)
        test_path: str | None = None,  # or a test split of its own: the same kind of corpus at this path
    ):
        super().__init__()
        if seq_len < 2:
            raise ConfigError(f"data.seq_len={seq_len} must be at least 2.")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer.")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be 0 (load in the main process) or more.")
        self.corpus, self.tokenizer_spec, self.cache_dir = corpus, tokenizer, Path(cache_dir).expanduser()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction, self.split_seed, self.seed = val_fraction, split_seed, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.token_dtype, self.shard_tokens = token_dtype, shard_tokens
        self.document_mask = document_mask
        self.test_fraction, self.test_path = test_fraction, test_path
        self.tokenizer: Any = None  # a tokenizers.Tokenizer, once build() ran
        self.tokenizer_path: Path | None = None
        self.cache: TokenCache | None = None
        self.special_ids: dict[str, int] = {}
        self.batch_builder: BatchBuilder | None = None

    # -- built once per run, before the model (its vocabulary size depends on the tokenizer) --
    def build(self, specials: dict[str, str]) -> None:
        """Fit or load the tokenizer and tokenize the corpus. Safe on every rank at once."""
        if "eos" not in specials:
            raise ConfigError(
                "the objective declares no `eos` special token; the token stream needs one to separate documents."
            )
        if self.tokenizer_spec.path is None:  # a vocabulary the token dtype cannot hold fails before training
            token_dtype(self.tokenizer_spec.vocab_size, self.token_dtype)
        fingerprint = self.corpus.fingerprint()
        size_hint = getattr(self.corpus, "size_bytes", lambda: None)()
        texts = lambda: sample_texts(self.corpus.documents(), self.tokenizer_spec.max_train_chars, size_hint)  # noqa: E731
        self.tokenizer, self.tokenizer_path = self.tokenizer_spec.load_or_train(
            texts, specials, fingerprint, self.cache_dir
        )
        self.special_ids = special_token_ids(self.tokenizer, specials)
        self.cache = TokenCache.build(
            self.corpus,
            self.tokenizer,
            self.tokenizer_path.parent.name,
            self.special_ids["eos"],
            self.val_fraction,
            self.split_seed,
            self.cache_dir,
            dtype=self.token_dtype,
            shard_tokens=self.shard_tokens,
            test_fraction=self.test_fraction,
            test_corpus=self.corpus.at(self.test_path) if self.test_path else None,
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def has_test(self) -> bool:
        """Whether a test split exists (data.test_fraction > 0 or data.test_path): test_dataloader() serves it."""
        return "test" in self._cache().meta["tokens"]

    def summary_facts(self) -> dict[str, Any]:
        return data_facts(self.corpus.name, self._cache().meta, self.vocab_size)

    @property
    def block_len(self) -> int:
        return self._builder().block_len

    @property
    def block_builder(self) -> BatchBuilder | None:
        return self.batch_builder  # every batch is built from blocks of the token stream

    def set_batch_builder(self, builder: BatchBuilder) -> None:
        if self.document_mask:
            if not isinstance(builder, SeparatesDocuments):
                raise ConfigError(
                    f"data.document_mask=true keeps packed documents apart in a decoder's causal attention, but this "
                    f"objective's batches ({type(builder).__name__}) cannot: encoders (model=bert, model=t5) attend "
                    "both ways over their examples. Use a decoder objective (model=gpt, model=llama, "
                    "model=gpt_prefix, model=llama_prefix) or set data.document_mask=false."
                )
            builder = builder.with_document_mask()
        self.batch_builder = builder
        for split in ("train", "val", "test")[: 3 if self.has_test else 2]:
            n = self._cache().meta["tokens"][split]
            if n < builder.block_len:
                raise DataError(
                    f"the {split} split of {self.corpus.name} has {n} tokens, fewer than one block of "
                    f"{builder.block_len} (data.seq_len={self.seq_len}). Add text or lower data.seq_len."
                )
        n_blocks = self._cache().meta["tokens"]["train"] // builder.block_len
        if n_blocks < self.batch_size:
            raise DataError(
                f"the train split of {self.corpus.name} has {n_blocks} blocks of {builder.block_len} tokens, fewer "
                f"than one batch of data.batch_size={self.batch_size}. Add text, or lower data.batch_size or "
                "data.seq_len."
            )

    def _cache(self) -> TokenCache:
        if self.cache is None:
            raise RuntimeError("LMDataModule.build() must run first")
        return self.cache

    def _builder(self) -> BatchBuilder:
        if self.batch_builder is None:
            raise RuntimeError("LMDataModule.build() and set_batch_builder() must run before loaders are made")
        return self.batch_builder

    def _dataset(self, split: str) -> TokenBlocks:
        return TokenBlocks(self._cache().tokens(split), self.block_len)

    def _loader_kwargs(self) -> dict:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        if self.num_workers > 0:
            # Workers are forked after the tokenizer ran on all cores; they never tokenize, and saying so
            # keeps `tokenizers` from warning in every worker.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return {"num_workers": self.num_workers, "pin_memory": pin, "persistent_workers": self.num_workers > 0}

    def _collate(self, split: str) -> BatchBuilder:
        # An objective may collate validation differently (MLM/T5: masks fixed, so val metrics compare).
        return self._builder().for_split(split)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        # The strategy's data-parallel replicas and this rank's replica: the ranks of a tensor-parallel group
        # (trainer.strategy.tensor_parallel_size) read the same batches.
        shard = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
        world, rank = (shard["num_replicas"], shard["rank"]) if shard else (1, 0)
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        if len(sampler) < self.batch_size:
            raise DataError(
                f"the train split has {len(dataset)} blocks of {self.block_len} tokens"
                f"{f' ({len(sampler)} per rank over {world} ranks)' if world > 1 else ''}, fewer than one batch of "
                f"data.batch_size={self.batch_size}. Add text, or lower data.batch_size or data.seq_len."
            )
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=BatchCollator(self._collate("train"), self.seed),
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("val"),
            batch_size=self.val_batch_size,
            shuffle=False,
            drop_last=False,
            collate_fn=BatchCollator(self._collate("val"), self.seed),
            **self._loader_kwargs(),
        )

    def test_dataloader(self) -> DataLoader:
        if not self.has_test:
            raise ConfigError("there is no test split: set data.test_fraction (e.g. 0.05) or data.test_path.")
        return DataLoader(
            self._dataset("test"),
            batch_size=self.val_batch_size,
            shuffle=False,
            drop_last=False,
            collate_fn=BatchCollator(self._collate("test"), self.seed),
            **self._loader_kwargs(),
        )
