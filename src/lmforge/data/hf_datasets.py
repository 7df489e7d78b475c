"""Hugging Face `datasets` as a corpus (optional extra: `pip install 'lmforge[hf-datasets]'`).

`data=hf data.path=<local .parquet/.json/.jsonl/.csv/.txt file, folder or glob | dataset name>`
with `data.text_field` naming the text column. Local files go through the matching `datasets`
builder (parquet, json, csv, text); any other value is a dataset name for the Hub (needs the
network once; `datasets` caches it under `data.corpus.cache_dir`). Each row is a document.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.corpus import Document, fingerprint_files, rechunk, resolve_files
from lmforge.errors import ConfigError, DataError

# local file suffix -> the `datasets` builder that reads it
BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".txt": "text",
    ".txt.gz": "text",
}
ROWS_PER_READ = 1000


def _looks_local(path: str) -> bool:
    p = Path(path).expanduser()
    return p.exists() or any(ch in path for ch in "*?[") or path.startswith((".", "/", "~"))


class HFDataset:
    def __init__(
        self,
        path: str,
        text_field: str = "text",
        name: str | None = None,
        split: str = "train",
        data_files: str | list[str] | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
    ):
        self.path, self.text_field, self.config_name, self.split = path, text_field, name, split
        self.data_files, self.revision, self.cache_dir = data_files, revision, cache_dir
        self._dataset = None
        self._local_files: list[Path] = []

    def at(self, path: str) -> HFDataset:
        """The same dataset settings read from another `path` (data.test_path)."""
        other = copy.copy(self)
        other.path, other._dataset, other._local_files = path, None, []
        return other

    @property
    def name(self) -> str:
        return f"hf:{self.path}" + (f"/{self.config_name}" if self.config_name else "") + f"[{self.split}]"

    def _load(self):
        if self._dataset is not None:
            return self._dataset
        try:
            import datasets
        except ImportError:
            raise ConfigError("data=hf needs the `datasets` package: pip install 'lmforge[hf-datasets]'.") from None
        builder, data_files = self.path, self.data_files
        if _looks_local(self.path):
            self._local_files = resolve_files(self.path, tuple(BUILDERS))
            kinds = {BUILDERS[next(s for s in BUILDERS if f.name.endswith(s))] for f in self._local_files}
            if len(kinds) > 1:
                raise DataError(
                    f"data.path={self.path!r} mixes file kinds ({', '.join(sorted(kinds))}); "
                    "point it at files of one kind."
                )
            builder, data_files = kinds.pop(), [str(f) for f in self._local_files]
        try:
            ds = datasets.load_dataset(
                builder,
                self.config_name,
                data_files=data_files,
                split=self.split,
                revision=self.revision,
                cache_dir=self.cache_dir,
            )
        except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, ...)
            raise DataError(
                f"data.path={self.path!r}: `datasets` could not load split {self.split!r}: {type(e).__name__}: {e}"
            ) from None
        if self.text_field not in ds.column_names:
            raise DataError(
                f"{self.name}: no column {self.text_field!r} (data.text_field); "
                f"the dataset has: {', '.join(ds.column_names)}."
            )
        if len(ds) == 0:
            raise DataError(f"{self.name}: the dataset split is empty.")
        self._dataset = ds
        return ds

    def size_bytes(self) -> int:
        return int(self._load().data.nbytes)

    def fingerprint(self) -> str:
        ds = self._load()
        # `datasets` hashes local files by path and modification time; our own content hash makes an
        # edited file rebuild the caches even when its mtime is unchanged.
        local = fingerprint_files(self._local_files) if self._local_files else ""
        blob = f"{ds._fingerprint}:{local}:{self.text_field}:{self.split}"
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    def documents(self) -> Iterator[Document]:
        ds = self._load().select_columns([self.text_field])
        row = 0
        for batch in ds.iter(batch_size=ROWS_PER_READ):
            for text in batch[self.text_field]:
                if text is None:
                    text = ""
                elif not isinstance(text, str):
                    raise DataError(
                        f"{self.name} row {row}: column {self.text_field!r} holds {type(text).__name__}, not text."
                    )
                yield Document(str(row), rechunk([text]))
                row += 1
