"""The LightningDataModule: corpus -> tokenizer -> token cache -> blocks -> objective's batches.

How examples are made from token blocks belongs to the objective (see `objectives/`); the
DataModule only cuts the token stream into blocks of the length the objective asks for and
hands lists of blocks to the objective's batch builder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmforge.data.token_cache import TokenCache
from lmforge.data.tokenizer import TokenizerSpec, special_token_ids
from lmforge.errors import ConfigError, DataError


class BatchBuilder(Protocol):
    """Made by an objective: how many stream tokens one example uses, and how to collate."""

    block_len: int

    # Optional: `for_split(split) -> BatchBuilder`, a variant for "train" or "val".

    def __call__(self, blocks: list[np.ndarray]) -> dict[str, torch.Tensor]: ...


class TokenBlocks(Dataset):
    """Non-overlapping blocks of `block_len` tokens from a memmapped split.

    The memmap is opened lazily so the dataset pickles cheaply into loader workers.
    """

    def __init__(self, path: Path, dtype: str, block_len: int):
        self.path, self.dtype, self.block_len = path, dtype, block_len
        n_tokens = path.stat().st_size // np.dtype(dtype).itemsize
        self.n_blocks = n_tokens // block_len
        self._tokens = None

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        s = i * self.block_len
        return np.asarray(self._tokens[s : s + self.block_len], dtype=np.int64)


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
        num_workers: int = 0,
        pin_memory: bool | None = None,
        path: str | None = None,  # the corpus location for text corpora; read by `corpus` (see conf/data)
    ):
        super().__init__()
        if seq_len < 2:
            raise ConfigError(f"data.seq_len={seq_len} must be at least 2.")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer.")
        self.corpus, self.tokenizer_spec, self.cache_dir = corpus, tokenizer, Path(cache_dir).expanduser()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.tokenizer = None
        self.tokenizer_path: Path | None = None
        self.cache: TokenCache | None = None
        self.special_ids: dict[str, int] = {}
        self.batch_builder: BatchBuilder | None = None

    # -- built once per run, before the model (its vocabulary size depends on the tokenizer) --
    def build(self, specials: dict[str, str]) -> None:
        """Fit or load the tokenizer and tokenize the corpus. Safe on every rank at once."""
        fingerprint = self.corpus.fingerprint()
        texts = (d.text for d in self.corpus.documents())
        self.tokenizer, self.tokenizer_path = self.tokenizer_spec.load_or_train(
            texts, specials, fingerprint, self.cache_dir)
        self.special_ids = special_token_ids(self.tokenizer, specials)
        self.cache = TokenCache.build(
            self.corpus, self.tokenizer, self.tokenizer_path.parent.name, self.special_ids["eos"],
            self.val_fraction, self.split_seed, self.cache_dir)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def set_batch_builder(self, builder: BatchBuilder) -> None:
        self.batch_builder = builder
        for split in ("train", "val"):
            n = self.cache.meta["tokens"][split]
            if n < builder.block_len:
                raise DataError(
                    f"the {split} split of {self.corpus.name} has {n} tokens, fewer than one block of "
                    f"{builder.block_len} (data.seq_len={self.seq_len}). Add text or lower data.seq_len."
                )

    def _dataset(self, split: str) -> TokenBlocks:
        if self.batch_builder is None:
            raise RuntimeError("LMDataModule.build() and set_batch_builder() must run before loaders are made")
        return TokenBlocks(self.cache.dir / f"{split}.bin", self.cache.meta["dtype"], self.batch_builder.block_len)

    def _collate(self, split: str) -> BatchBuilder:
        # An objective may collate validation differently (MLM/T5: masks fixed, so val metrics compare).
        for_split = getattr(self.batch_builder, "for_split", None)
        return for_split(split) if for_split else self.batch_builder

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            self._dataset(split), batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
            collate_fn=self._collate(split), num_workers=self.num_workers, pin_memory=pin,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)
