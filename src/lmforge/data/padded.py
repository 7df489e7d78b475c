"""What data served as padded sequences (data=pairs, data=classification, data=instructions) shares: ragged token
storage in a cache entry, and length-bucketed batches (sequences of similar length share a batch, so padding to the
longest in each wastes little) served by one kind of loader."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


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
