"""Local text corpora: a file, a folder, or a glob of `.txt` / `.txt.gz` files.

A corpus yields documents; a document is the unit of the train/validation split, so no
document is ever seen in both.
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError

TEXT_SUFFIXES = (".txt", ".txt.gz")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def _is_text_file(p: Path) -> bool:
    return p.is_file() and p.name.endswith(TEXT_SUFFIXES)


def resolve_text_files(path: str | Path, key: str = "data.path") -> list[Path]:
    """Expand a file, folder (recursively) or glob to a sorted list of text files."""
    raw = str(path)
    p = Path(raw).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if _is_text_file(f))
        if not files:
            raise DataError(
                f"{key}={raw!r}: the folder holds no {' or '.join(TEXT_SUFFIXES)} files. "
                "Add text files to it or point the key at a file or glob."
            )
    elif any(ch in raw for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if _is_text_file(Path(f)))
        if not files:
            raise DataError(f"{key}={raw!r}: the glob matches no {' or '.join(TEXT_SUFFIXES)} files.")
    else:
        raise DataError(
            f"{key}={raw!r}: no such file or folder. Point it at a .txt/.txt.gz file, "
            "a folder of them, or a glob such as 'corpus/*.txt'."
        )
    return [f.resolve() for f in files]


def read_text(path: Path, errors: str = "strict") -> str:
    """Read a UTF-8 (optionally gzipped) file; name the file and byte offset of bad bytes."""
    try:
        raw = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}. "
            "Convert the file to UTF-8, or set data.corpus.errors=replace to replace bad bytes with U+FFFD."
        ) from None


def fingerprint_files(files: list[Path]) -> str:
    """Content hash of the files (names and bytes), so any edit invalidates caches."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def split_paragraph_documents(text: str, doc_id: str, n_pieces: int = 100) -> list[Document]:
    """Cut one long text into about `n_pieces` documents at blank lines (for single-file corpora)."""
    paragraphs = text.split("\n\n")
    per_piece = max(1, len(paragraphs) // n_pieces)
    return [
        Document(f"{doc_id}#{i // per_piece}", "\n\n".join(paragraphs[i : i + per_piece]))
        for i in range(0, len(paragraphs), per_piece)
    ]


class TextFiles:
    """Plain-text corpus. One document per file; a single file is cut into paragraph documents."""

    def __init__(self, path: str, errors: str = "strict"):
        if errors not in ("strict", "replace", "ignore"):
            raise DataError(f"data.corpus.errors={errors!r}: choose one of strict, replace, ignore.")
        self.path = path
        self.errors = errors
        self._files: list[Path] | None = None

    @property
    def name(self) -> str:
        return f"text:{self.path}"

    def files(self) -> list[Path]:
        if self._files is None:
            files = resolve_text_files(self.path)
            if all(f.stat().st_size == 0 for f in files):
                raise DataError(f"data.path={self.path!r}: the corpus is empty ({len(files)} file(s), 0 bytes). "
                                "Give it some text.")
            self._files = files
        return self._files

    def fingerprint(self) -> str:
        return fingerprint_files(self.files()) + f":{self.errors}"

    def documents(self) -> Iterator[Document]:
        files = self.files()
        if len(files) == 1:
            yield from split_paragraph_documents(read_text(files[0], self.errors), files[0].name)
            return
        for f in files:
            yield Document(f.name, read_text(f, self.errors))
