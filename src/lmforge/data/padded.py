"""What data served as padded sequences (data=pairs, data=classification, data=instructions) shares: ragged token
storage in a cache entry, the train/val/test split of examples (data.val_fraction, data.test_fraction, data.test_path),
and length-bucketed batches (sequences of similar length share a batch, so padding to the longest in each wastes
little) served by one kind of loader, the same for every split (PaddedLoaders)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from lmforge.data.token_cache import SPLITS, splits_of
from lmforge.errors import ConfigError

T = TypeVar("T")
NO_TEST = "there is no test split: set data.test_fraction (e.g. 0.05) or data.test_path."


def write_ragged(folder: Path, stem: str, sequences: list[list[int]], dtype) -> np.ndarray:
    """`{stem}.bin` (flat ids) and `{stem}.idx` (int64 offsets, one more than sequences); the lengths back."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tofile(folder / f"{stem}.idx")
    np.fromiter((i for s in sequences for i in s), dtype=dtype, count=int(lengths.sum())).tofile(folder / f"{stem}.bin")
    return lengths


class LengthBuckets(BatchSampler):
    """Batches of pairs of similar source length. The indices come from `sampler` (random for
    training, sequential for validation; Lightning swaps in a DistributedSampler under DDP, which is
    why this is a BatchSampler with a `sampler` argument). They are sorted by length within windows
    of `bucket_size` batches (None: all at once) and cut into batches; with `shuffle`, the batch order
    is then shuffled, seeded by the sampler's order, so each epoch differs and a seed reproduces it."""

    def __init__(
        self,
        sampler,
        batch_size: int,
        drop_last: bool = False,
        lengths: Sequence[int] = (),
        bucket_size: int | None = 50,
        shuffle: bool = True,
    ):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.bucket_size, self.shuffle = list(lengths), bucket_size, shuffle

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        window = len(order) if self.bucket_size is None else self.batch_size * max(1, self.bucket_size)
        batches = []
        for w in range(0, len(order), max(window, 1)):
            chunk = sorted(order[w : w + window], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            random.Random(zlib.crc32(np.asarray(order, dtype=np.int64).tobytes())).shuffle(batches)
        yield from batches


def bucketed_loader(
    data: Dataset,
    order: Sampler,
    lengths: Sequence[int],
    batch_size: int,
    bucket_size: int | None,
    shuffle: bool,
    collate,
    num_workers: int,
    pin_memory: bool | None,
) -> DataLoader:
    """The loader of a padded data module: `order`'s indices in LengthBuckets, collated by the objective's builder.
    pin_memory None: on when CUDA is there."""
    batches = LengthBuckets(order, batch_size, lengths=lengths, bucket_size=bucket_size, shuffle=shuffle)
    return DataLoader(
        data,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
    )


class FixedOrder(Sampler[int]):
    """The indices 0..n-1 in one seeded permutation, the same every epoch: a validation order whose first batches are
    a fair sample (what trainer.limit_val_batches keeps), unlike a sort by length."""

    def __init__(self, n: int, seed: int = 0):
        self.order = np.random.default_rng(seed).permutation(n).tolist()

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)


def check_test_options(val_fraction: float, test_fraction: float, test_path: str | None) -> Path | None:
    """data.test_fraction / data.test_path of a padded data module, checked when it is made (before a tokenizer is
    trained or anything is read); the test file's path, or None."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(
            f"data.test_fraction={test_fraction} must be at least 0 (no test split) and below 1, e.g. 0.1."
        )
    if test_fraction and test_path:
        raise ConfigError(
            f"data.test_fraction={test_fraction} and data.test_path are both set: the test examples are either a "
            "share of data.path or a file of their own. Set one of them."
        )
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} leave no examples to train on; "
            "their sum must be below 1."
        )
    if not test_path:
        return None
    path = Path(test_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.test_path={test_path!r}: no such file. Give a file of test examples like data.path.")
    return path


def deal_splits(
    data: list[T] | dict[str, list[T]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test: list[T] | None = None,
) -> dict[str, list[T]]:
    """The examples of each split. A source's own split ({"train": ..., "val": ...}: data.val_path, or a bundled
    task that splits itself) is kept; a list is dealt by the split every data kind uses (token_cache.splits_of, each
    example a document, by index: without a test split the same validation examples as before there was one). A
    test_fraction takes its examples from train, never from val; `test` (data.test_path's examples) is the test
    split instead."""
    if isinstance(data, dict):
        out, val_fraction = dict(data), 0.0
    else:
        out = {"train": list(data)}
    if test is not None:
        if "test" in out:
            raise ConfigError("data.test_path is set, but the data source has a test split of its own; drop one.")
        out["test"], test_fraction = test, 0.0
    elif test_fraction and "test" in out:
        raise ConfigError("data.test_fraction is set, but the data source has a test split of its own; drop one.")
    if val_fraction or test_fraction:
        examples = out["train"]
        labels = splits_of([str(i) for i in range(len(examples))], val_fraction, seed, test_fraction)
        for name in SPLITS:
            if name in labels:
                out[name] = [e for e, k in zip(examples, labels) if k == name]
    return out


class PaddedLoaders:
    """The loaders of a padded data module (a LightningDataModule's train/val/test_dataloader), one for each split
    from the module's `_loader(split, batch_size, shuffle)`: training shuffled, validation and test in a fixed
    order at data.val_batch_size. The module says with `has_test` whether it holds a test split."""

    batch_size: int
    val_batch_size: int

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    @property
    def has_test(self) -> bool:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if not self.has_test:
            raise ConfigError(NO_TEST)
        return self._loader("test", self.val_batch_size, shuffle=False)


def split_counts(meta: dict[str, Any], key: str) -> dict[str, Any]:
    """meta[key] per split, test only where there is one."""
    return {s: meta[key][s] for s in SPLITS if s in meta[key]}
