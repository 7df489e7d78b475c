"""The token stream of a corpus, split by document into train and validation, on disk as memmap shards.

Layout of one cache entry (folder named by a hash of corpus content, tokenizer and settings):
  train/00000.bin ...   flat token ids (uint16, or uint32 when the vocabulary needs it), cut into
  val/00000.bin ...     shards of at most `shard_tokens`; every document is followed by `eos`
  meta.json             counts, dtype, shard sizes, special ids, the unigram baseline, build figures

The build reads the corpus once, as a stream: a reader thread prepares batches of text while
`Tokenizer.encode_batch_fast` tokenizes the previous batch on all cores (it releases the GIL). Tokens go
to a staging file; once every document's length is known, the documents are dealt to train and
val (the split needs the number of documents, which a stream learns only at its end). Memory is
bounded by the encode batch and the copy chunk, not by the corpus. The entry is built in a
temporary folder and renamed into place, under a lock (`build_once`), so concurrent runs and DDP
ranks build it once and a failed build leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tokenizers import Tokenizer

from lmforge.data.locking import build_once
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the layout or the split changes: old entries are then simply not found
ENCODE_BATCH_CHARS = 1 << 22  # text per encode call: bounds the Encodings held at once (~100 bytes/token)
COPY_TOKENS = 1 << 23  # tokens per step when dealing the staging stream to the splits
DEFAULT_SHARD_TOKENS = 1 << 28  # 512 MiB per shard at uint16
DTYPES: dict[str, np.dtype[np.unsignedinteger[Any]]] = {"uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32)}


def token_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """The narrowest unsigned dtype that holds every id (or the one asked for, if it does)."""
    if requested not in ("auto", *DTYPES):
        raise ConfigError(f"data.token_dtype={requested!r}: choose auto, uint16 or uint32.")
    if requested == "auto":
        requested = "uint16" if vocab_size <= 2**16 else "uint32"
    dtype = DTYPES[requested]
    if vocab_size > np.iinfo(dtype).max + 1:
        raise DataError(
            f"the tokenizer's vocabulary has {vocab_size:,} tokens, more than data.token_dtype={requested} "
            f"holds ({np.iinfo(dtype).max + 1:,} ids). Use data.token_dtype=auto or uint32, "
            "or a smaller tokenizer.vocab_size."
        )
    return dtype


def doc_hash(doc_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "little")


SPLITS = ("train", "val", "test")  # split labels 0, 1, 2 (split_labels)


def split_labels(hashes: np.ndarray, val_fraction: float, test_fraction: float = 0.0) -> np.ndarray:
    """Deterministic document-level split into train (0), val (1) and test (2), one label per document.

    Documents are ordered by their seeded hash: the first `val_fraction` of them are val, the next
    `test_fraction` test, the rest train. With test_fraction 0 this is the two-way split lmforge always
    made (the same val documents); a test split takes its documents from train, never from val. At least
    one document goes to each split asked for (a fraction of 0 asks for none).
    """
    for key, f in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise DataError(f"{key}={f} must be between 0 and 1 (exclusive).")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} leave no documents to "
            "train on; their sum must be below 1."
        )
    held = int(val_fraction > 0) + int(test_fraction > 0)
    n = len(hashes)
    if n < held + 1:
        names = "train/validation" + ("/test" if test_fraction > 0 else "")
        raise DataError(
            f"the corpus has fewer than {held + 1} documents ({n}); a {names} split needs at least {held + 1}. "
            "Add text, or split your file into several files."
        )
    n_val = min(n - held, max(1, round(n * val_fraction))) if val_fraction > 0 else 0
    n_test = min(n - n_val - 1, max(1, round(n * test_fraction))) if test_fraction > 0 else 0
    labels = np.zeros(n, dtype=np.int8)
    order = np.argsort(hashes, kind="stable")
    labels[order[:n_val]] = 1
    labels[order[n_val : n_val + n_test]] = 2
    return labels


def val_mask(hashes: np.ndarray, val_fraction: float) -> np.ndarray:
    """The two-way split: True for the val documents (the smallest seeded hashes). At least one on each side."""
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive).")
    return split_labels(hashes, val_fraction) == 1


def splits_of(doc_ids: list[str], val_fraction: float, seed: int, test_fraction: float = 0.0) -> list[str]:
    """The split ("train", "val" or "test") of each document id, as `split_labels` deals them: the one split
    every data kind uses (token streams here, pairs in pairs.py)."""
    hashes = np.array([doc_hash(d, seed) for d in doc_ids], dtype=np.uint64)
    return [SPLITS[k] for k in split_labels(hashes, val_fraction, test_fraction)]


def split_of(doc_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The ids of the validation documents of the two-way split."""
    return {d for d, s in zip(doc_ids, splits_of(doc_ids, val_fraction, seed)) if s == "val"}


class ShardedTokens:
    """One split's token stream over its shard files, read like one array (`len`, slices, `np.asarray`).

    Shards are memory-mapped lazily, so the object pickles cheaply into loader workers.
    """

    def __init__(self, paths: list[Path], dtype: str | np.dtype):
        self.paths, self.dtype = list(paths), np.dtype(dtype)
        sizes = [p.stat().st_size // self.dtype.itemsize for p in self.paths]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def _shard(self, i: int) -> np.ndarray:
        if self._maps is None:
            self._maps = [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths]
        return self._maps[i]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as an array (a copy), across shard boundaries."""
        start, stop = max(0, start), min(len(self), stop)
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while start < stop:
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            end = min(stop, hi)
            parts.append(self._shard(i)[start - lo : end - lo])
            start, i = end, i + 1
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.read(start, stop)[::step]
        i = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(key)
        return self.read(i, i + 1)[0]

    def __array__(self, dtype=None, copy=None):
        arr = self.read(0, len(self))
        return arr if dtype is None else arr.astype(dtype)

    def chunks(self, size: int = COPY_TOKENS) -> Iterator[np.ndarray]:
        for s in range(0, len(self), size):
            yield self.read(s, s + size)


class ShardWriter:
    """Appends tokens to `folder/00000.bin`, `00001.bin`, ... of at most `shard_tokens` each."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        folder.mkdir(parents=True, exist_ok=True)
        self.sizes: list[int] = []
        self._fh: BinaryIO | None = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while tokens.size:
            fh = self._fh
            if fh is None or self.sizes[-1] >= self.shard_tokens:
                fh = self._roll()
            room = self.shard_tokens - self.sizes[-1]
            part, tokens = tokens[:room], tokens[room:]
            fh.write(part.tobytes())
            self.sizes[-1] += part.size

    def _roll(self) -> BinaryIO:
        """Close the current shard and open the next one."""
        if self._fh is not None:
            self._fh.close()
        self._fh = open(self.folder / f"{len(self.sizes):05d}.bin", "wb")
        self.sizes.append(0)
        return self._fh

    def close(self) -> list[int]:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return self.sizes


def _prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate `items` in a background thread, `depth` ahead; its exceptions surface here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(("error", e))

    thread = threading.Thread(target=produce, name="lmforge-corpus-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def _text_batches(documents: Iterable, seed: int, max_chars: int) -> Iterator[list[tuple[int, str | None]]]:
    """Batches of (document hash, text piece); a None piece marks the end of a document.

    Documents with no text but whitespace are left out (their pieces are held back until a piece
    with text comes; at most `max_chars` of them).
    """
    batch: list = []
    chars = 0
    for doc in documents:
        h = doc_hash(doc.id, seed)
        held, held_chars, has_text = [], 0, False
        for piece in doc.chunks:
            if not has_text:
                if (not piece or piece.isspace()) and held_chars < max_chars:
                    held.append(piece)
                    held_chars += len(piece)
                    continue
                has_text, pieces = True, [*held, piece]
            else:
                pieces = [piece]
            for p in pieces:
                batch.append((h, p))
                chars += len(p)
            if chars >= max_chars:
                yield batch
                batch, chars = [], 0
        if has_text:
            batch.append((h, None))
    if batch:
        yield batch


def encode_corpus(
    documents: Iterable,
    tokenizer: Tokenizer,
    eos_id: int,
    dtype: np.dtype,
    out,
    seed: int,
    batch_chars: int = ENCODE_BATCH_CHARS,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize documents into `out` (a binary file), each followed by eos. Returns (lengths, hashes).

    Documents with no tokens are left out. A document's pieces are tokenized separately; they are
    cut where that gives the tokens of the whole (see `corpus.rechunk`).
    """
    # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we do not use: the same ids, faster
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    lengths, hashes = [], []
    current = 0  # tokens of the document being written
    eos = np.array([eos_id], dtype=dtype)
    for batch in _prefetched(_text_batches(documents, seed, batch_chars)):
        encodings = iter(encode([t for _, t in batch if t is not None], add_special_tokens=False))
        parts = []
        for h, piece in batch:
            if piece is not None:
                ids = next(encodings).ids
                if ids:
                    parts.append(np.array(ids, dtype=dtype))
                    current += len(ids)
            elif current:
                parts.append(eos)
                lengths.append(current + 1)
                hashes.append(h)
                current = 0
        if parts:
            out.write(np.concatenate(parts).tobytes())
    return np.array(lengths, dtype=np.int64), np.array(hashes, dtype=np.uint64)


def deal_to_splits(
    stream: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    writers: dict[str, ShardWriter],
    chunk: int = COPY_TOKENS,
) -> None:
    """Copy each document's tokens from the staging stream to its split (labels: 0 train, 1 val, 2 test, one per
    document; `split_labels`), a chunk at a time."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    for a in range(0, len(stream), chunk):
        b = min(a + chunk, len(stream))
        first = int(np.searchsorted(ends, a, side="right"))
        last = int(np.searchsorted(ends, b - 1, side="right"))
        seg = np.minimum(ends[first : last + 1], b) - np.maximum(starts[first : last + 1], a)
        label = np.repeat(labels[first : last + 1], seg)
        tokens = np.asarray(stream[a:b])
        for k, split in enumerate(SPLITS):
            if split in writers:
                writers[split].write(tokens[label == k])


@dataclass
class TokenCache:
    dir: Path
    meta: dict

    def tokens(self, split: str) -> ShardedTokens:
        return ShardedTokens(self.shard_paths(split), self.meta["dtype"])

    def shard_paths(self, split: str) -> list[Path]:
        return [self.dir / split / f"{i:05d}.bin" for i in range(len(self.meta["shards"][split]))]

    @classmethod
    def build(
        cls,
        corpus,
        tokenizer: Tokenizer,
        tokenizer_key: str,
        eos_id: int,
        val_fraction: float,
        split_seed: int,
        cache_dir: Path,
        dtype: str = "auto",
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        test_fraction: float = 0.0,
        test_corpus=None,
    ) -> TokenCache:
        """Tokenize `corpus` into train/val (and test: `test_fraction` of its documents, or every document of a
        separate `test_corpus`, data.test_path) splits, once per content and settings."""
        vocab = tokenizer.get_vocab_size()
        np_dtype = token_dtype(vocab, dtype)
        if not 0 < val_fraction < 1:
            raise DataError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive).")
        if shard_tokens < 1:
            raise ConfigError(f"data.shard_tokens={shard_tokens} must be positive.")
        if test_fraction and test_corpus is not None:
            raise ConfigError(
                f"data.test_fraction={test_fraction} and data.test_path are both set: the test split is either a "
                "share of the corpus or a separate corpus. Set one of them (data.test_fraction=0 with test_path)."
            )
        # Without a test split the key is what it always was: existing cache entries stay valid.
        test_key = ([test_fraction] if test_fraction else []) + (
            [test_corpus.fingerprint()] if test_corpus is not None else []
        )
        key = hashlib.blake2b(
            json.dumps(
                [
                    FORMAT,
                    corpus.fingerprint(),
                    tokenizer_key,
                    eos_id,
                    val_fraction,
                    split_seed,
                    np_dtype.name,
                    shard_tokens,
                    *test_key,
                ]
            ).encode(),
            digest_size=10,
        ).hexdigest()

        def build(tmp: Path) -> None:
            started = time.perf_counter()
            log.info("tokenizing %s into %s", corpus.name, tmp.parent / key)
            staging = tmp / "stream.tmp"
            with open(staging, "wb") as out:
                lengths, hashes = encode_corpus(corpus.documents(), tokenizer, eos_id, np_dtype, out, split_seed)
                if len(lengths) == 0:
                    raise DataError(f"the corpus {corpus.name} is empty after tokenization; give it some text.")
                labels = split_labels(hashes, val_fraction, test_fraction)
                if test_corpus is not None:  # its documents follow the corpus's in the staging stream, all test
                    test_lengths, _ = encode_corpus(test_corpus.documents(), tokenizer, eos_id, np_dtype, out, 0)
                    if len(test_lengths) == 0:
                        raise DataError(f"data.test_path: {test_corpus.name} is empty after tokenization.")
                    lengths = np.concatenate([lengths, test_lengths])
                    labels = np.concatenate([labels, np.full(len(test_lengths), 2, dtype=np.int8)])
            splits = [s for k, s in enumerate(SPLITS) if k < 2 or (labels == k).any()]
            writers = {s: ShardWriter(tmp / s, np_dtype, shard_tokens) for s in splits}
            stream = np.memmap(staging, dtype=np_dtype, mode="r")
            deal_to_splits(stream, lengths, labels, writers)
            del stream
            staging.unlink()
            shards = {s: w.close() for s, w in writers.items()}
            seconds = time.perf_counter() - started
            total = int(lengths.sum())
            meta = {
                "format": FORMAT,
                "corpus": corpus.name,
                "dtype": np_dtype.name,
                "vocab_size": vocab,
                "eos_id": eos_id,
                "tokens": {s: int(sum(n)) for s, n in shards.items()},
                "documents": {s: int((labels == SPLITS.index(s)).sum()) for s in splits},
                "shards": shards,
                "shard_tokens": shard_tokens,
                "unigram_val_loss": unigram_val_loss(tmp, shards, np_dtype, vocab),
                **(
                    {"unigram_test_loss": unigram_val_loss(tmp, shards, np_dtype, vocab, "test")}
                    if "test" in splits
                    else {}
                ),
                "build": {
                    "seconds": round(seconds, 3),
                    "tokens_per_sec": round(total / max(seconds, 1e-9)),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                },
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            log.info("tokenized %s: %d tokens in %.1fs", corpus.name, total, seconds)

        entry = build_once(Path(cache_dir) / "tokens" / key, build)
        return cls(entry, json.loads((entry / "meta.json").read_text()))


def unigram_val_loss(
    folder: Path, shards: dict[str, list[int]], dtype: np.dtype, vocab_size: int, split: str = "val"
) -> float:
    """Cross-entropy (nats/token) on val (or `split`) of a unigram model fitted on train (add-one smoothing).

    The floor any model must beat: it knows token frequencies and nothing of context.
    """

    def tokens(split):
        return ShardedTokens([folder / split / f"{i:05d}.bin" for i in range(len(shards[split]))], dtype)

    counts = np.zeros(vocab_size, dtype=np.float64)
    for chunk in tokens("train").chunks():
        counts += np.bincount(chunk, minlength=vocab_size)
    logp = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    val = tokens(split)
    return -sum(float(logp[chunk].sum()) for chunk in val.chunks()) / len(val)
