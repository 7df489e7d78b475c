"""Labelled texts for sequence classification: `data=classification data.path=<train.jsonl|.csv|.tsv>`.

JSONL: one object per line with a text field (`data.text_field`), optionally a second text (`data.text_pair_field`,
sentence-pair tasks) and a label (`data.label_field`: a string or an integer). CSV/TSV: a header line naming the
columns. `.gz` files are read too. The label set is the training file's (sorted: numerically when every label is an
integer); a validation label outside it is an error, since the classifier has no output for it.

Examples are tokenized once into a cache entry (ids as flat arrays plus offsets, as data=pairs), split into train
and validation (a separate `data.val_path`, or a seeded `data.val_fraction`; a source may split itself, as the
Shakespeare genre demo does by play) and optionally test (a seeded `data.test_fraction` of the training examples, or
a file of its own, `data.test_path`: padded.deal_splits), and served in length buckets (data/padded.py). How an
example becomes model input ([CLS]/[SEP] or eos, token types, padding) is the objective's business: its batch
builder provides `classification_collator` (protocols.MakesClassificationBatches).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lmforge.data.corpus import Document, read_text
from lmforge.data.locking import build_once
from lmforge.data.padded import (
    FixedOrder,
    PaddedLoaders,
    bucketed_loader,
    check_test_options,
    deal_splits,
    write_ragged,
)
from lmforge.data.token_cache import token_dtype
from lmforge.data.tokenizer import TokenizerSpec, special_token_ids
from lmforge.errors import ConfigError, DataError
from lmforge.protocols import MakesClassificationBatches

FORMATS = ("jsonl", "csv", "tsv")


@dataclass(frozen=True)
class Labelled:
    """One example as read: its text(s) and its label as written in the file (str or int)."""

    text: str
    pair: str | None
    label: str | int


@dataclass(frozen=True)
class TokenExample:
    a: np.ndarray
    b: np.ndarray | None
    label: int


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ConfigError(f"data.format={fmt!r} is not known; choose auto, {', '.join(FORMATS)}.")
        return fmt
    name = path.name.removesuffix(".gz")
    for f, suffixes in (("jsonl", (".jsonl", ".json", ".ndjson")), ("csv", (".csv",)), ("tsv", (".tsv",))):
        if name.endswith(suffixes):
            return f
    raise ConfigError(
        f"data.path={str(path)!r}: cannot tell the format from the name; use a .jsonl, .csv or .tsv file "
        "(optionally .gz), or set data.format=jsonl|csv|tsv."
    )


def _label(value: Any, where: str, field: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: the label field {field!r} must be a string or an integer, got {value!r}.")
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: the label field {field!r} is empty. Give every example a label.")
    return value


def read_labelled(
    path: Path,
    fmt: str = "auto",
    text_field: str = "text",
    text_pair_field: str | None = None,
    label_field: str = "label",
    errors: str = "strict",
    key: str = "data.path",
) -> list[Labelled]:
    """The examples of a JSONL, CSV or TSV file; a bad line is named by file and line number."""
    if not path.is_file():
        raise DataError(f"{key}={str(path)!r}: no such file. Give a .jsonl, .csv or .tsv file of labelled texts.")
    fmt = _format_of(path, fmt)
    text = read_text(path, errors)
    fields = [text_field, *([text_pair_field] if text_pair_field else []), label_field]
    rows: list[tuple[int, dict[str, Any]]] = []
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object with the fields {fields}.")
            rows.append((n, obj))
    else:
        reader = csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
        if missing := [f for f in fields if f not in (reader.fieldnames or [])]:
            raise DataError(
                f"{path}:1: the header line {reader.fieldnames} lacks {missing}; name the columns with "
                "data.text_field / data.text_pair_field / data.label_field."
            )
        rows = [(reader.line_num, row) for row in reader]
    out = []
    for n, row in rows:
        where = f"{path}:{n}"
        for f in fields[:-1]:
            if not isinstance(row.get(f), str):
                what = "has no field" if f not in row else "has a non-string field"
                raise DataError(
                    f"{where}: the line {what} {f!r} (fields: {sorted(row)}). Set data.text_field / "
                    "data.text_pair_field to the right names."
                )
        if label_field not in row or row[label_field] is None:
            raise DataError(f"{where}: the line has no label field {label_field!r} (fields: {sorted(row)}).")
        pair = row[text_pair_field] if text_pair_field else None
        out.append(Labelled(row[text_field], pair, _label(row[label_field], where, label_field)))
    if not out:
        raise DataError(f"{key}={str(path)!r} holds no examples.")
    return out


def label_set(examples: list[Labelled]) -> list[str]:
    """The training labels in id order: numeric order when every label is an integer (or a string of one, as CSV
    writes them), else sorted as strings."""
    names = {str(e.label).strip() for e in examples}
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class ClassificationFile:
    """The classification source: one training file and optionally a validation file."""

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        format: str = "auto",
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        errors: str = "strict",
    ):
        self.path = Path(path).expanduser()
        self.val_path = Path(val_path).expanduser() if val_path else None
        self.options = (format, text_field, text_pair_field, label_field, errors)
        self.name = str(self.path) if self.val_path is None else f"{self.path} + {self.val_path}"

    def read(self) -> dict[str, list[Labelled]] | list[Labelled]:
        def one(p: Path, key: str) -> list[Labelled]:
            return read_labelled(p, *self.options, key=key)

        if self.val_path is None:
            return one(self.path, "data.path")
        return {"train": one(self.path, "data.path"), "val": one(self.val_path, "data.val_path")}

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(self.options).encode())
        for p, key in ((self.path, "data.path"), (self.val_path, "data.val_path")):
            if p is not None:
                if not p.is_file():
                    raise DataError(f"{key}={str(p)!r}: no such file. Give a .jsonl, .csv or .tsv file.")
                h.update(p.name.encode())
                h.update(p.read_bytes())
        return h.hexdigest()


def documents(source: Any) -> Iterator[Document]:
    """Every text of a source, both fields of pairs: what a tokenizer is trained on."""
    data = source.read()
    for split, examples in data.items() if isinstance(data, dict) else [("all", data)]:
        for i, e in enumerate(examples):
            yield Document(f"{split}:{i}", [e.text] if e.pair is None else [e.text, e.pair])


def _ids_of(examples: list[Labelled], labels: list[str], split: str, source_name: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    if unknown := sorted({str(e.label).strip() for e in examples} - set(index)):
        raise DataError(
            f"{source_name}: the {split} split has label(s) {unknown[:10]} that the training file never uses "
            f"(its labels: {labels[:20]}); the classifier has no output for them. Fix those examples or add "
            "training examples with them."
        )
    return np.array([index[str(e.label).strip()] for e in examples], dtype=np.int64)


class ClassificationCache:
    """Tokenized examples of both splits on disk: per split `{split}.a.*` (and `{split}.b.*` for pairs) ragged ids
    and `{split}.labels.npy`; meta.json has the label set, counts, token totals and the class-prior baseline."""

    def __init__(self, folder: Path, meta: dict):
        self.dir, self.meta = folder, meta

    @classmethod
    def build(
        cls,
        source,
        tokenizer,
        tokenizer_key: str,
        val_fraction: float,
        seed: int,
        cache_dir: Path,
        test_fraction: float = 0.0,
        test_file: tuple[Path, tuple[str, str, str | None, str, str]] | None = None,  # data.test_path, how to read it
    ):
        # without a test split, the key (and so the cache entry) is what it always was
        test_key: list[Any] = [test_fraction] if test_fraction else []
        if test_file is not None:
            test_key = [test_file[0].name, hashlib.blake2b(test_file[0].read_bytes(), digest_size=16).hexdigest()]
        key = hashlib.blake2b(
            json.dumps(
                ["classification-v1", source.fingerprint(), tokenizer_key, val_fraction, seed, *test_key]
            ).encode(),
            digest_size=10,
        ).hexdigest()
        dtype = token_dtype(tokenizer.get_vocab_size())

        def build(tmp: Path) -> None:
            test = read_labelled(test_file[0], *test_file[1], key="data.test_path") if test_file else None
            data = deal_splits(source.read(), val_fraction, test_fraction, seed, test)
            if not data["val"]:
                raise DataError(f"{source.name}: the validation split is empty; raise data.val_fraction.")
            labels = label_set(data["train"])
            if len(labels) < 2:
                raise DataError(f"{source.name}: the training file has one label ({labels}); a classifier needs two.")
            meta: dict[str, Any] = {"dtype": dtype.name, "labels": labels, "examples": {}, "tokens": {}, "counts": {}}
            meta["pairs"] = any(e.pair is not None for e in data["train"])
            for split, examples in data.items():
                ids = _ids_of(examples, labels, split, source.name)
                np.save(tmp / f"{split}.labels.npy", ids)
                n = 0
                for side in ("a", "b") if meta["pairs"] else ("a",):
                    texts = [e.text if side == "a" else (e.pair or "") for e in examples]
                    encs = tokenizer.encode_batch(texts, add_special_tokens=False)
                    n += int(write_ragged(tmp, f"{split}.{side}", [e.ids for e in encs], dtype).sum())
                meta["examples"][split], meta["tokens"][split] = len(examples), n
                meta["counts"][split] = np.bincount(ids, minlength=len(labels)).tolist()
            meta["baseline"] = class_prior_baseline(meta["counts"]["train"], meta["counts"]["val"])
            if "test" in data:
                test_baseline = class_prior_baseline(meta["counts"]["train"], meta["counts"]["test"])
                meta["baseline"]["class_prior_test_loss"] = test_baseline["class_prior_val_loss"]
                meta["baseline"]["majority_test_acc"] = test_baseline["majority_val_acc"]
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

        entry = build_once(Path(cache_dir) / "classification" / key, build)
        return cls(entry, json.loads((entry / "meta.json").read_text()))


def class_prior_baseline(train_counts: list[int], val_counts: list[int]) -> dict[str, float]:
    """What a model that ignores the text scores: cross-entropy on val of the training label frequencies (add-one
    smoothed), the accuracy of always answering the training majority label, and uniform chance (1 / labels)."""
    train, val = np.asarray(train_counts, np.float64), np.asarray(val_counts, np.float64)
    logp = np.log(train + 1) - np.log(train.sum() + len(train))
    return {
        "class_prior_val_loss": float(-(val * logp).sum() / max(val.sum(), 1)),
        "majority_val_acc": float(val[int(train.argmax())] / max(val.sum(), 1)),
        "chance_acc": 1.0 / len(train),
    }


class TokenExamples(Dataset):
    """The tokenized examples of one split, memmapped lazily (pickles cheaply into loader workers)."""

    def __init__(self, folder: Path, split: str, dtype: str, pairs: bool):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.sides = ("a", "b") if pairs else ("a",)
        self.idx = {s: np.fromfile(folder / f"{split}.{s}.idx", np.int64) for s in self.sides}
        self.labels = np.load(folder / f"{split}.labels.npy")
        self._ids: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def length(self, i: int) -> int:
        return sum(int(self.idx[s][i + 1] - self.idx[s][i]) for s in self.sides)

    def _side(self, side: str) -> np.ndarray:
        if side not in self._ids:
            path = self.folder / f"{self.split}.{side}.bin"
            self._ids[side] = np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.zeros(0)
        return self._ids[side]

    def _get(self, side: str, i: int) -> np.ndarray:
        return np.asarray(self._side(side)[self.idx[side][i] : self.idx[side][i + 1]], dtype=np.int64)

    def __getitem__(self, i: int) -> TokenExample:
        b = self._get("b", i) if "b" in self.sides else None
        return TokenExample(self._get("a", i), b, int(self.labels[i]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ids": {}}


class ClassificationDataModule(PaddedLoaders, L.LightningDataModule):
    """Same interface as LMDataModule (build, vocab_size, special_ids, set_batch_builder, loaders), serving labelled
    examples of at most `seq_len` tokens (special tokens included). `source` replaces the file options (a bundled
    task such as data=shakespeare_genre)."""

    def __init__(
        self,
        tokenizer: TokenizerSpec,
        cache_dir: str,
        path: str | None = None,
        val_path: str | None = None,
        format: str = "auto",
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        errors: str = "strict",
        source: Any = None,
        seq_len: int = 128,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        bucket_size: int = 50,
        test_fraction: float = 0.0,  # share of the training examples held out for a test split (0: none)
        test_path: str | None = None,  # or a file of test examples (read as data.path is)
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        if seq_len < 4 or batch_size < 1:
            raise ConfigError(f"data.seq_len={seq_len} must be at least 4 and data.batch_size={batch_size} at least 1.")
        if source is None:
            if not path:
                raise ConfigError("data=classification needs data.path=<train.jsonl|.csv|.tsv> (data.path is unset).")
            source = ClassificationFile(path, val_path, format, text_field, text_pair_field, label_field, errors)
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must be between 0 and 1.")
        test_file = check_test_options(0.0 if isinstance(source, ClassificationFile) and val_path else val_fraction,
                                       test_fraction, test_path)  # fmt: skip
        if test_fraction and getattr(source, "test_option", None):
            raise ConfigError(
                f"data.test_fraction={test_fraction}: {source.name} makes its own split; hold out a test split with "
                f"{source.test_option} instead (a share of its training examples would come from training's plays)."
            )
        self.test_fraction = test_fraction
        self.test_file = (
            None if test_file is None else (test_file, (format, text_field, text_pair_field, label_field, errors))
        )
        self.source = source
        self.tokenizer_spec, self.cache_dir = tokenizer, Path(cache_dir).expanduser()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction, self.split_seed, self.bucket_size = val_fraction, split_seed, bucket_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.tokenizer: Any = None
        self.tokenizer_path: Path | None = None
        self.cache: ClassificationCache | None = None
        self.special_ids: dict[str, int] = {}
        self.collate: Any = None
        self.batch_builder: Any = None

    def build(self, specials: dict[str, str]) -> None:
        """Fit or load the tokenizer on the texts and tokenize them. Safe on every rank."""
        texts = (t for d in documents(self.source) for t in d.text)
        self.tokenizer, self.tokenizer_path = self.tokenizer_spec.load_or_train(
            texts, specials, self.source.fingerprint(), self.cache_dir
        )
        self.special_ids = special_token_ids(self.tokenizer, specials)
        if "pad" not in self.special_ids:
            raise ConfigError(
                "data=classification pads its batches and needs an objective with a pad token: "
                "model=bert_cls, gpt_cls or llama_cls."
            )
        self.cache = ClassificationCache.build(
            self.source,
            self.tokenizer,
            self.tokenizer_path.parent.name,
            self.val_fraction,
            self.split_seed,
            self.cache_dir,
            test_fraction=self.test_fraction,
            test_file=self.test_file,
        )

    @property
    def has_test(self) -> bool:
        """Whether a test split exists (data.test_fraction, data.test_path, or the source's own): test_dataloader()
        serves it."""
        return "test" in self._cache().meta["examples"]

    def _cache(self) -> ClassificationCache:
        if self.cache is None:
            raise RuntimeError("ClassificationDataModule.build() must run first")
        return self.cache

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def labels(self) -> list[str]:
        return list(self._cache().meta["labels"])

    @property
    def train_label_counts(self) -> list[int]:
        return list(self._cache().meta["counts"]["train"])

    def summary_facts(self) -> dict[str, Any]:
        meta = self._cache().meta
        baseline = meta["baseline"]
        data: dict[str, Any] = {"corpus": self.source.name, "vocab_size": self.vocab_size, "labels": meta["labels"]}
        splits = [s for s in ("train", "val", "test") if s in meta["examples"]]
        data.update({f"{s}_tokens": meta["tokens"][s] for s in splits})
        data.update({f"{s}_examples": meta["examples"][s] for s in splits})
        data.update({f"{s}_label_counts": meta["counts"][s] for s in splits})
        # unigram_val_loss: the text-blind floor the console compares val/loss with (here the class prior's)
        floors = {"unigram_val_loss": baseline["class_prior_val_loss"]}
        if "class_prior_test_loss" in baseline:
            floors["unigram_test_loss"] = baseline["class_prior_test_loss"]
        return {"data": data, "baseline": {**floors, **baseline}}

    @property
    def block_len(self) -> int:
        return self.batch_builder.block_len

    @property
    def block_builder(self) -> None:
        """None: batches are padded to the longest example in each, not blocks of the token stream."""
        return None

    def set_batch_builder(self, builder: Any) -> None:
        if not isinstance(builder, MakesClassificationBatches):
            raise ConfigError(
                "data=classification serves labelled texts, which only a classifier trains on: use model=bert_cls, "
                "gpt_cls or llama_cls."
            )
        meta = self._cache().meta
        specials = 3 if meta["pairs"] else 2
        average = round(meta["tokens"]["train"] / max(meta["examples"]["train"], 1)) + specials
        self.collate = builder.classification_collator(self.seq_len, max(1, min(self.seq_len, average)))
        self.batch_builder = self.collate

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if self.collate is None:
            raise RuntimeError("build() and set_batch_builder() must run before loaders are made")
        meta = self._cache().meta
        data = TokenExamples(self._cache().dir, split, meta["dtype"], meta["pairs"])
        # Validation: a fixed permutation, bucketed in windows and not sorted as a whole, so the first batches (all
        # of them under trainer.limit_val_batches) are a fair sample rather than the shortest examples.
        order = RandomSampler(data) if shuffle else FixedOrder(len(data))
        lengths = [data.length(i) for i in range(len(data))]
        return bucketed_loader(
            data,
            order,
            lengths,
            batch_size,
            self.bucket_size,
            shuffle,
            self.collate.for_split(split),
            self.num_workers,
            self.pin_memory,
        )
