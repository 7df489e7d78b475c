"""The token stream of a corpus, split by document into train and validation, on disk as memmaps.

Layout of one cache entry (folder named by a hash of corpus content, tokenizer and split):
  train.bin, val.bin   flat token ids (uint16, or uint32 when the vocabulary needs it);
                       every document is followed by the `eos` token
  meta.json            counts, dtype, special ids, and the unigram baseline
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lmforge.data.locking import build_once
from lmforge.errors import DataError

ENCODE_BATCH_DOCS = 64  # documents per encode_batch call: bounds memory, keeps all cores busy


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_of(doc_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """Deterministic document-level split: the val docs are those with the smallest seeded hash."""
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive).")
    if len(doc_ids) < 2:
        raise DataError("the corpus has fewer than 2 documents; a train/validation split needs at least 2. "
                        "Add text, or split your file into several files.")
    ranked = sorted(doc_ids, key=lambda d: hashlib.blake2b(f"{seed}:{d}".encode(), digest_size=8).digest())
    n_val = min(len(doc_ids) - 1, max(1, round(len(doc_ids) * val_fraction)))
    return set(ranked[:n_val])


@dataclass
class TokenCache:
    dir: Path
    meta: dict

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.dir / f"{split}.bin", dtype=self.meta["dtype"], mode="r")

    @classmethod
    def build(cls, corpus, tokenizer: Tokenizer, tokenizer_key: str, eos_id: int, val_fraction: float,
              split_seed: int, cache_dir: Path) -> "TokenCache":
        key = hashlib.blake2b(json.dumps([corpus.fingerprint(), tokenizer_key, val_fraction, split_seed]).encode(),
                              digest_size=10).hexdigest()
        vocab = tokenizer.get_vocab_size()
        dtype = token_dtype(vocab)

        def build(tmp: Path) -> None:
            val_ids = split_of([d.id for d in corpus.documents()], val_fraction, split_seed)
            counts = {"train": 0, "val": 0}
            docs = {"train": 0, "val": 0}
            files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
            batch = []

            def flush():
                encs = tokenizer.encode_batch([d.text for d in batch], add_special_tokens=False)
                for d, enc in zip(batch, encs):
                    split = "val" if d.id in val_ids else "train"
                    arr = np.asarray(enc.ids + [eos_id], dtype=dtype)
                    files[split].write(arr.tobytes())
                    counts[split] += arr.size
                    docs[split] += 1
                batch.clear()

            try:
                for doc in corpus.documents():
                    batch.append(doc)
                    if len(batch) >= ENCODE_BATCH_DOCS:
                        flush()
                if batch:
                    flush()
            finally:
                for f in files.values():
                    f.close()
            if counts["train"] <= docs["train"] or counts["val"] <= docs["val"]:
                raise DataError(f"the corpus {corpus.name} is empty after tokenization; give it some text.")
            meta = {"dtype": dtype.name, "vocab_size": vocab, "eos_id": eos_id, "tokens": counts, "documents": docs,
                    "unigram_val_loss": unigram_val_loss(tmp, dtype, vocab)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

        entry = build_once(Path(cache_dir) / "tokens" / key, build)
        return cls(entry, json.loads((entry / "meta.json").read_text()))


def unigram_val_loss(folder: Path, dtype: np.dtype, vocab_size: int, chunk: int = 1 << 24) -> float:
    """Cross-entropy (nats/token) on val of a unigram model fitted on train (add-one smoothing).

    The floor any model must beat: it knows token frequencies and nothing of context.
    """
    counts = np.zeros(vocab_size, dtype=np.float64)
    train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
    for i in range(0, train.size, chunk):
        counts += np.bincount(train[i : i + chunk], minlength=vocab_size)
    logp = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")
    total = sum(float(logp[val[i : i + chunk]].sum()) for i in range(0, val.size, chunk))
    return -total / val.size
