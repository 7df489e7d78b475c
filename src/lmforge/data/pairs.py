"""Supervised (source, target) pairs for seq2seq: `data=pairs data.path=<file.jsonl | file.tsv>`.

JSONL: one object per line with the source and target fields (`data.source_field`,
`data.target_field`). TSV: `source<TAB>target` per line, or a header line naming the two fields
among its columns. `.gz` files are read too.

Pairs are tokenized once into a cache entry (ids as flat memmaps plus offsets), split into train
and validation (a separate `data.val_path`, or a seeded `data.val_fraction` of the pairs), and
served in length buckets: training batches hold pairs of similar source length, shuffled, so dynamic
padding wastes little. How a pair becomes an example (eos, truncation, padding, decoder inputs) is
the objective's business: its batch builder provides `pair_collator(max_source_len, max_target_len,
block_len)` (protocols.MakesPairBatches).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from lmforge.data.corpus import Document, read_text
from lmforge.data.datamodule import data_facts
from lmforge.data.locking import build_once
from lmforge.data.padded import PaddedLoaders, bucketed_loader, check_test_options, deal_splits, write_ragged
from lmforge.data.token_cache import token_dtype
from lmforge.data.tokenizer import TokenizerSpec, special_token_ids
from lmforge.errors import ConfigError, DataError
from lmforge.protocols import MakesPairBatches

FORMATS = ("jsonl", "tsv")


@dataclass(frozen=True)
class TokenPair:
    source: np.ndarray
    target: np.ndarray
    target_text: str | None = None  # the raw reference (validation), for BLEU


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ConfigError(f"data.format={fmt!r} is not known; choose auto, {' or '.join(FORMATS)}.")
        return fmt
    name = path.name.removesuffix(".gz")
    for f, suffixes in (("jsonl", (".jsonl", ".json", ".ndjson")), ("tsv", (".tsv", ".txt"))):
        if name.endswith(suffixes):
            return f
    raise ConfigError(
        f"data.path={str(path)!r}: cannot tell the format from the name; use a .jsonl or .tsv "
        "file (optionally .gz), or set data.format=jsonl|tsv."
    )


def read_pairs(
    path: Path,
    fmt: str = "auto",
    source_field: str = "source",
    target_field: str = "target",
    errors: str = "strict",
    key: str = "data.path",
) -> list[tuple[str, str]]:
    """The (source, target) strings of a JSONL or TSV file; bad lines are named."""
    if not path.is_file():
        raise DataError(f"{key}={str(path)!r}: no such file. Give a .jsonl or .tsv file of pairs.")
    fmt = _format_of(path, fmt)
    lines = read_text(path, errors).splitlines()
    pairs: list[tuple[str, str]] = []
    if fmt == "jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object with {source_field!r} and {target_field!r}.")
            for field in (source_field, target_field):
                if not isinstance(obj.get(field), str):
                    what = "has no field" if field not in obj else "has a non-string field"
                    raise DataError(
                        f"{path}:{n}: the line {what} {field!r} (fields: {sorted(obj)}). "
                        "Set data.source_field / data.target_field to the right names."
                    )
            pairs.append((obj[source_field], obj[target_field]))
    else:
        cols = (0, 1)
        first = lines[0].split("\t") if lines else []
        if source_field in first and target_field in first:  # a header line
            cols, lines = (first.index(source_field), first.index(target_field)), [""] + lines[1:]
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) <= max(cols) or (cols == (0, 1) and len(cells) != 2):
                raise DataError(
                    f"{path}:{n}: expected 'source<TAB>target' (or the columns named by a header line "
                    f"with {source_field!r} and {target_field!r}), found {len(cells)} column(s)."
                )
            pairs.append((cells[cols[0]], cells[cols[1]]))
    if not pairs:
        raise DataError(f"{key}={str(path)!r} holds no pairs.")
    return pairs


class PairsFile:
    """The pairs source: one file (and optionally a separate validation file)."""

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        format: str = "auto",
        source_field: str = "source",
        target_field: str = "target",
        errors: str = "strict",
        test_path: str | None = None,
    ):
        self.path = Path(path).expanduser()
        self.val_path = Path(val_path).expanduser() if val_path else None
        self.test_path = Path(test_path).expanduser() if test_path else None
        self.format, self.source_field, self.target_field, self.errors = format, source_field, target_field, errors
        self.name = str(self.path) if self.val_path is None else f"{self.path} + {self.val_path}"

    def read(self) -> dict[str, list[tuple[str, str]]] | list[tuple[str, str]]:
        def one(p: Path, key: str):
            return read_pairs(p, self.format, self.source_field, self.target_field, self.errors, key)

        if self.val_path is None:
            return one(self.path, "data.path")
        return {"train": one(self.path, "data.path"), "val": one(self.val_path, "data.val_path")}

    def read_test(self) -> list[tuple[str, str]] | None:
        """The pairs of data.test_path (None without one): kept out of tokenizer training, as unseen data is."""
        if self.test_path is None:
            return None
        return read_pairs(
            self.test_path, self.format, self.source_field, self.target_field, self.errors, "data.test_path"
        )

    def split(self, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[tuple[str, str]]]:
        """The pairs of each split: a separate val/test file, else a seeded share of data.path's pairs, dealt by
        the split every data kind uses (padded.deal_splits, each pair a document)."""
        data = self.read()
        if isinstance(data, list) and not 0 < val_fraction < 1:
            raise DataError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive).")
        return deal_splits(data, val_fraction, test_fraction, seed, self.read_test())

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([self.format, self.source_field, self.target_field, self.errors]).encode())
        for p in (self.path, self.val_path, self.test_path):
            if p is not None:
                if not p.is_file():
                    raise DataError(f"{p}: no such file. Give a .jsonl or .tsv file of pairs.")
                h.update(p.name.encode())
                h.update(p.read_bytes())
        return h.hexdigest()

    def documents(self) -> Iterator[Document]:
        """Both sides of every pair as text: what a tokenizer is trained on (a shared vocabulary, as T5)."""
        data = self.read()
        for split, pairs in data.items() if isinstance(data, dict) else [("all", data)]:
            for i, (s, t) in enumerate(pairs):
                yield Document(f"{split}:{i}:source", [s])
                yield Document(f"{split}:{i}:target", [t])


class PairsCache:
    """Tokenized pairs of both splits on disk. Per split: `{split}.{side}.bin` (flat ids) and
    `{split}.{side}.idx` (int64 offsets, one more than pairs); `val.targets.json` keeps the raw
    references; meta.json has counts and the unigram baseline of the targets."""

    def __init__(self, folder: Path, meta: dict):
        self.dir, self.meta = folder, meta

    @classmethod
    def build(
        cls,
        source: PairsFile,
        tokenizer,
        tokenizer_key: str,
        eos_id: int,
        val_fraction: float,
        split_seed: int,
        cache_dir: Path,
        test_fraction: float = 0.0,
    ) -> PairsCache:
        if test_fraction and source.test_path is not None:
            raise ConfigError(
                f"data.test_fraction={test_fraction} and data.test_path are both set: the test pairs are either a "
                "share of data.path or a file of their own. Set one of them."
            )
        # without a test split, the key (and so the cache entry) is what it always was
        test_key = [test_fraction] if test_fraction else []
        key = hashlib.blake2b(
            json.dumps(["pairs-v2", source.fingerprint(), tokenizer_key, val_fraction, split_seed, *test_key]).encode(),
            digest_size=10,
        ).hexdigest()
        dtype = token_dtype(tokenizer.get_vocab_size())

        def build(tmp: Path) -> None:
            data = source.split(val_fraction, test_fraction, split_seed)
            meta = {
                "dtype": dtype.name,
                "vocab_size": tokenizer.get_vocab_size(),
                "eos_id": eos_id,
                "pairs": {},
                "tokens": {},
            }
            meta["source_tokens"] = {}
            for split, pairs in data.items():
                n_tokens = 0
                for side, texts in (("source", [s for s, _ in pairs]), ("target", [t for _, t in pairs])):
                    encs = tokenizer.encode_batch(texts, add_special_tokens=False)
                    lengths = write_ragged(tmp, f"{split}.{side}", [e.ids for e in encs], dtype)
                    if side == "source":
                        meta["source_tokens"][split] = int(lengths.sum())
                    n_tokens += int(lengths.sum()) + len(pairs)  # each side ends with eos in an example
                meta["pairs"][split], meta["tokens"][split] = len(pairs), n_tokens
            for split in ("val", "test"):
                if split in data:  # the raw references, for BLEU
                    (tmp / f"{split}.targets.json").write_text(json.dumps([t for _, t in data[split]]))
            meta["unigram_val_loss"] = _unigram_target_loss(tmp, dtype, tokenizer.get_vocab_size(), eos_id)
            if "test" in data:
                meta["unigram_test_loss"] = _unigram_target_loss(tmp, dtype, tokenizer.get_vocab_size(), eos_id, "test")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

        entry = build_once(Path(cache_dir) / "pairs" / key, build)
        return cls(entry, json.loads((entry / "meta.json").read_text()))


def _read_side(folder: Path, split: str, side: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromfile(folder / f"{split}.{side}.bin", dtype=dtype)
    return ids, np.fromfile(folder / f"{split}.{side}.idx", np.int64)


def _unigram_target_loss(folder: Path, dtype, vocab: int, eos_id: int, split: str = "val") -> float:
    """Cross-entropy (nats/token) on the val (or `split`) targets (each + eos) of a unigram model of the train
    targets, add-one smoothed: the floor a seq2seq model must beat."""

    def counts(split: str) -> np.ndarray:
        ids, idx = _read_side(folder, split, "target", dtype)
        c = np.bincount(ids.astype(np.int64), minlength=vocab).astype(np.float64)
        c[eos_id] += len(idx) - 1
        return c

    train, val = counts("train"), counts(split)
    logp = np.log(train + 1.0) - np.log(train.sum() + vocab)
    return float(-(val * logp).sum() / max(val.sum(), 1.0))


class TokenPairs(Dataset):
    """The tokenized pairs of one split. Offsets are read at once; ids are memmapped lazily, so the
    dataset pickles cheaply into loader workers."""

    def __init__(self, folder: Path, split: str, dtype: str, with_text: bool):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.src_idx = np.fromfile(folder / f"{split}.source.idx", np.int64)
        self.tgt_idx = np.fromfile(folder / f"{split}.target.idx", np.int64)
        self.texts = json.loads((folder / f"{split}.targets.json").read_text()) if with_text else None
        self._ids: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.src_idx) - 1

    def source_length(self, i: int) -> int:
        return int(self.src_idx[i + 1] - self.src_idx[i])

    def _side(self, side: str) -> np.ndarray:
        if side not in self._ids:
            path = self.folder / f"{self.split}.{side}.bin"
            self._ids[side] = np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.zeros(0)
        return self._ids[side]

    def __getitem__(self, i: int) -> TokenPair:
        src, tgt = self._side("source"), self._side("target")
        return TokenPair(
            np.asarray(src[self.src_idx[i] : self.src_idx[i + 1]], dtype=np.int64),
            np.asarray(tgt[self.tgt_idx[i] : self.tgt_idx[i + 1]], dtype=np.int64),
            None if self.texts is None else self.texts[i],
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ids": {}}


class PairsDataModule(PaddedLoaders, L.LightningDataModule):
    """Same interface as LMDataModule (build, vocab_size, special_ids, set_batch_builder, loaders),
    serving TokenPairs instead of token blocks. `seq_len` caps source tokens, `max_target_len` targets."""

    def __init__(
        self,
        path: str,
        tokenizer: TokenizerSpec,
        cache_dir: str,
        val_path: str | None = None,
        format: str = "auto",
        source_field: str = "source",
        target_field: str = "target",
        errors: str = "strict",
        seq_len: int = 128,
        max_target_len: int = 128,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        bucket_size: int = 50,
        test_fraction: float = 0.0,
        test_path: str | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        for key, value, least in (
            ("data.seq_len", seq_len, 2),
            ("data.max_target_len", max_target_len, 2),
            ("data.batch_size", batch_size, 1),
        ):
            if value < least:
                raise ConfigError(f"{key}={value} must be at least {least}.")
        check_test_options(val_fraction if val_path is None else 0.0, test_fraction, test_path)
        self.corpus = PairsFile(path, val_path, format, source_field, target_field, errors, test_path)
        self.test_fraction = test_fraction
        self.tokenizer_spec, self.cache_dir = tokenizer, Path(cache_dir).expanduser()
        self.seq_len, self.max_target_len, self.batch_size = seq_len, max_target_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction, self.split_seed, self.bucket_size = val_fraction, split_seed, bucket_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.tokenizer: Any = None  # a tokenizers.Tokenizer, once build() ran
        self.tokenizer_path: Path | None = None
        self.cache: PairsCache | None = None
        self.special_ids: dict[str, int] = {}
        self.collate: Any = None  # the objective's pair collator, once set_batch_builder() ran
        self.batch_builder: Any = None

    def build(self, specials: dict[str, str]) -> None:
        """Fit or load the tokenizer on both sides of the pairs and tokenize them. Safe on every rank."""
        texts = (d.text for d in self.corpus.documents())
        self.tokenizer, self.tokenizer_path = self.tokenizer_spec.load_or_train(
            texts, specials, self.corpus.fingerprint(), self.cache_dir
        )
        self.special_ids = special_token_ids(self.tokenizer, specials)
        if "eos" not in self.special_ids:
            raise ConfigError("data=pairs needs an objective with an eos token (model=t5).")
        self.cache = PairsCache.build(
            self.corpus,
            self.tokenizer,
            self.tokenizer_path.parent.name,
            self.special_ids["eos"],
            self.val_fraction,
            self.split_seed,
            self.cache_dir,
            test_fraction=self.test_fraction,
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def has_test(self) -> bool:
        """Whether a test split exists (data.test_fraction > 0 or data.test_path): test_dataloader() serves it."""
        return "test" in self._cache().meta["pairs"]

    def _cache(self) -> PairsCache:
        if self.cache is None:
            raise RuntimeError("PairsDataModule.build() must run first")
        return self.cache

    def summary_facts(self) -> dict[str, Any]:
        return data_facts(self.corpus.name, self._cache().meta, self.vocab_size)

    @property
    def block_len(self) -> int:
        return self.batch_builder.block_len

    @property
    def block_builder(self) -> None:
        """None: batches are pairs padded to the longest in each, not blocks of the token stream, so no one batch
        has the shapes of all (the pre-run FLOP forecast falls back to 6 x params x tokens)."""
        return None

    def set_batch_builder(self, builder: Any) -> None:
        if not isinstance(builder, MakesPairBatches):
            raise ConfigError(
                "data=pairs serves (source, target) pairs, which only the seq2seq objective trains "
                "on: use model=t5 (or t5_tiny, t5_small)."
            )
        pairs, tokens = self._cache().meta["pairs"]["train"], self._cache().meta["source_tokens"]["train"]
        average = max(1, min(self.seq_len, round((tokens + pairs) / max(pairs, 1))))  # source tokens with eos
        self.collate = builder.pair_collator(self.seq_len, self.max_target_len, average)
        self.batch_builder = self.collate  # the interface LMDataModule has (train.py reads block_len)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if self.collate is None:
            raise RuntimeError("PairsDataModule.build() and set_batch_builder() must run before loaders are made")
        data = TokenPairs(self._cache().dir, split, self._cache().meta["dtype"], with_text=split != "train")
        lengths = [data.source_length(i) for i in range(len(data))]
        sampler = RandomSampler(data) if shuffle else SequentialSampler(data)
        bucket_size = self.bucket_size if shuffle else None  # validation: sorted by length as a whole
        return bucketed_loader(
            data,
            sampler,
            lengths,
            batch_size,
            bucket_size,
            shuffle,
            self.collate.for_split(split),
            self.num_workers,
            self.pin_memory,
        )
