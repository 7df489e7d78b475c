"""Token blocks, and a train loader that is deterministic for a seed, rank-aware and resumable mid-epoch.

How Lightning 2.6 resumes data (lightning/pytorch/loops/fit_loop.py, utilities/combined_loader.py):
a train DataLoader that has `state_dict()`/`load_state_dict()` is saved in the checkpoint under
the fit loop's `combined_loader` state, and on restore `load_state_dict` is called *before* the
loader is iterated again. A plain DataLoader restarts the epoch from its first batch, with a new
shuffle. So the loader here counts the batches it has handed out in the epoch; restored, its
sampler skips exactly those and yields the rest, in the same order. (Lightning fetches no batch
ahead when the loader has a length, so the count at checkpoint time is the batches trained on.)

Under DDP, Lightning replaces a loader's sampler by a DistributedSampler unless it already is
one. Ours subclasses DistributedSampler and shards the shuffled blocks by rank itself, so each
rank gets a disjoint share and the skip-on-resume logic stays ours.

Every batch builder is called as `builder(blocks, rng)` (lmforge.protocols.BatchBuilder): `BatchCollator` passes a
generator seeded from the loader seed and the batch's block indices, so a batch that draws random numbers (MLM
masking, span corruption) is the same for a seed whatever the number of workers, and after a resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized
from typing import Any, cast

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lmforge.data.token_cache import ShardedTokens
from lmforge.protocols import BatchBuilder


class Blocks(list):
    """The blocks of one batch, with their indices in the dataset (to seed per-batch randomness)."""

    indices: list[int]


class TokenBlocks(Dataset):
    """Non-overlapping blocks of `block_len` tokens from a split's token stream (across shards)."""

    def __init__(self, tokens: ShardedTokens, block_len: int):
        self.tokens, self.block_len = tokens, block_len
        self.n_blocks = len(tokens) // block_len

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n_blocks:
            raise IndexError(i)
        s = i * self.block_len
        return self.tokens.read(s, s + self.block_len).astype(np.int64)

    def __getitems__(self, indices: list[int]) -> Blocks:
        # torch's fetcher calls this for a whole batch; the result goes to the collate function as is
        blocks = Blocks(self[i] for i in indices)
        blocks.indices = list(indices)
        return blocks


class BatchCollator:
    """The objective's batch builder as a collate function, with a generator seeded for this batch."""

    def __init__(self, builder: BatchBuilder, seed: int):
        self.builder, self.seed = builder, seed

    def __call__(self, blocks: list[np.ndarray]):
        indices = getattr(blocks, "indices", None) or []  # a plain list when torch's fetcher calls per item
        return self.builder(blocks, np.random.default_rng([self.seed, *indices]))


class ResumableSampler(DistributedSampler):
    """Shuffled (per seed and epoch) block indices, this rank's share of them, from a given position.

    `skip_next(n)` makes the next iteration of the current epoch start after its first `n` indices
    (if Lightning moves on to another epoch first, e.g. after `limit_train_batches`, it starts afresh).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        # drop_last: every rank gets the same number of blocks; the few left over wait for the next epoch
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self._skip, self._skip_epoch = 0, 0

    def skip_next(self, n: int) -> None:
        self._skip, self._skip_epoch = n, self.epoch

    @property
    def pending_skip(self) -> int:
        return self._skip if self._skip_epoch == self.epoch else 0

    def order(self, epoch: int) -> np.ndarray:
        n = len(cast(Sized, self.dataset))  # TokenBlocks has a length
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order[: self.total_size][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self.pending_skip, 0
        for i in self.order(self.epoch)[skip:]:
            yield int(i)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose `state_dict` says where in the epoch it is; Lightning saves and restores it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumable = self._resumable() is not None
        self._batches = 0  # batches handed out in the current epoch

    def _resumable(self) -> tuple[ResumableSampler, int] | None:
        """The sampler and batch size to resume by. None when Lightning rebuilt the loader with another sampler
        (trainer.overfit_batches uses a sequential one): it is then a plain DataLoader with nothing to resume."""
        if isinstance(self.sampler, ResumableSampler) and self.batch_size is not None and self.drop_last:
            return self.sampler, self.batch_size
        return None

    def __iter__(self):
        if (resumable := self._resumable()) is None:
            return super().__iter__()
        sampler, batch_size = resumable
        # read the skip first: with workers, super().__iter__() already starts drawing indices
        self._batches = sampler.pending_skip // batch_size
        return self._counting(super().__iter__())

    def _counting(self, it):
        for batch in it:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict:
        if (resumable := self._resumable()) is None:
            return {}
        s, batch_size = resumable
        return {
            "epoch": s.epoch,
            "batches": self._batches,
            "seed": s.seed,
            "shuffle": s.shuffle,
            "num_replicas": s.num_replicas,
            "batch_size": batch_size,
            "num_blocks": len(cast(Sized, s.dataset)),
        }

    def load_state_dict(self, state: dict) -> None:
        if (resumable := self._resumable()) is None or not state:
            return
        s, batch_size = resumable
        same = {"seed": s.seed, "shuffle": s.shuffle, "num_blocks": len(cast(Sized, s.dataset))}
        changed: dict[str, tuple[Any, Any]] = {k: (state.get(k), v) for k, v in same.items() if state.get(k) != v}
        epoch, batches = int(state["epoch"]), int(state["batches"])
        saved_layout = (state.get("num_replicas"), state.get("batch_size"))
        if saved_layout != (s.num_replicas, batch_size):
            # Another data-parallel layout (a TP checkpoint resumed with FSDP, 2 ranks resumed on 1): the ranks
            # together read the epoch's order front to back (rank r takes positions r, r + R, ...), so the examples
            # all ranks consumed are its first replicas x batch size x batches, whatever the layout. It continues
            # exactly when that count is a whole number of the new layout's steps.
            consumed = batches * int(saved_layout[0] or 0) * int(saved_layout[1] or 0)
            per_step = s.num_replicas * batch_size
            if consumed % per_step == 0:
                batches = consumed // per_step
            else:
                changed["examples consumed"] = (consumed, f"not a multiple of {s.num_replicas} x {batch_size}")
        if batches >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, batches = epoch + 1, 0
        s.set_epoch(epoch)
        if changed:
            warnings.warn(
                f"the train data changed since the checkpoint ({changed}); the epoch restarts from its "
                "first batch instead of continuing exactly where it stopped.",
                stacklevel=2,
            )
            batches = 0
        s.skip_next(batches * batch_size)
        self._batches = batches
