"""Local text corpora: a file, a folder, or a glob of `.txt` / `.txt.gz` files.

A corpus yields documents; a document is the unit of the train/validation split, so no
document is ever seen in both. Files are read as a stream of bounded pieces, so memory does
not grow with the size of a file or of the corpus.

What any corpus provides (text files here, `jsonl.py`, `hf_datasets.py`):
  name           a short label for messages and summary.json
  fingerprint()  a hash of the content, so any edit invalidates the caches built from it
  documents()    an iterator of `Document`s, in a fixed order
  size_bytes()   about how much text there is (to sample a slice for tokenizer training)
  at(path)       the same kind of corpus at another path (data.test_path)
"""

from __future__ import annotations

import codecs
import copy
import glob as globlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError

TEXT_SUFFIXES = (".txt", ".txt.gz")
READ_BYTES = 1 << 22  # bytes read from a file at a time
PIECE_CHARS = 1 << 16  # longest piece of text handed on at once: the tokenizer's unit of parallel work
MAX_SPLIT_DOC_CHARS = 1 << 20  # a single-file corpus is cut into documents of at most about this size
SPLIT_DOCS = 100  # ... and at least about this many, so a validation split exists


@dataclass(frozen=True)
class Document:
    """One document: its id (stable across runs, used for the split) and its text in pieces.

    `chunks` may be a one-shot iterator that reads the file as it is consumed: read it once.
    """

    id: str
    chunks: Iterable[str]

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def resolve_files(path: str | Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES, key: str = "data.path") -> list[Path]:
    """Expand a file, folder (recursively) or glob to a sorted list of files with these suffixes."""
    raw = str(path)
    kinds = " or ".join(suffixes)

    def wanted(p: Path) -> bool:
        return p.is_file() and p.name.endswith(suffixes)

    p = Path(raw).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if wanted(f))
        if not files:
            raise DataError(
                f"{key}={raw!r}: the folder holds no {kinds} files. Add files to it or point the key at a file or glob."
            )
    elif any(ch in raw for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if wanted(Path(f)))
        if not files:
            raise DataError(f"{key}={raw!r}: the glob matches no {kinds} files.")
    else:
        raise DataError(
            f"{key}={raw!r}: no such file or folder. Point it at a {kinds} file, "
            "a folder of them, or a glob such as 'corpus/*.txt'."
        )
    return [f.resolve() for f in files]


def document_ids(files: list[Path]) -> list[str]:
    """Ids that stay the same wherever the corpus lives: paths relative to the files' common folder."""
    if len(files) == 1:
        return [files[0].name]
    root = os.path.commonpath([str(f.parent) for f in files])
    return [os.path.relpath(f, root) for f in files]


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def bad_utf8(path: Path, offset: int, byte: int, where: str = "") -> DataError:
    return DataError(
        f"{path}{where} is not valid UTF-8: byte 0x{byte:02x} at offset {offset}. Convert the file to UTF-8, "
        "or set data.corpus.errors=replace to replace bad bytes with U+FFFD."
    )


def read_chunks(path: Path, errors: str = "strict", read_bytes: int = READ_BYTES) -> Iterator[str]:
    """Decode a UTF-8 (optionally gzipped) file as a stream; name the file and byte offset of bad bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    consumed = 0  # bytes of the file handed to the decoder so far
    try:
        with open_binary(path) as fh:
            while True:
                raw = fh.read(read_bytes)
                pending = decoder.getstate()[0]  # an incomplete character carried over from the last read
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    data = pending + raw
                    raise bad_utf8(path, consumed - len(pending) + e.start, data[e.start]) from None
                consumed += len(raw)
                if text:
                    yield text
                if not raw:
                    return
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def read_text(path: Path, errors: str = "strict") -> str:
    """The whole file as text (small files; large ones go through `read_chunks`)."""
    return "".join(read_chunks(path, errors))


def _safe_cut(text: str, lo: int, hi: int) -> int:
    """A position in (lo, hi] to cut `text` so that tokenizing the parts gives the tokens of the whole.

    A single space between two non-space characters is such a place for every tokenizer kind here
    (byte-level BPE, WordPiece, Unigram with Metaspace, characters): the space starts the next word
    on either side of the cut. Text with no spaces at all (rare) is cut at `hi`.
    """
    p = text.rfind(" ", lo, hi)
    while p > lo:
        if not text[p - 1].isspace() and p + 1 < len(text) and not text[p + 1].isspace():
            return p
        p = text.rfind(" ", lo, p)
    return hi


def rechunk(chunks: Iterable[str], max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Re-cut a stream of text into pieces of at most `max_chars`, at places that keep tokenization exact."""
    buf = ""
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        start = 0
        while len(buf) - start > max_chars:
            cut = _safe_cut(buf, start + max_chars // 2, start + max_chars)
            yield buf[start:cut]
            start = cut
        buf = buf[start:]
    if buf:
        yield buf


def paragraph_documents(chunks: Iterable[str], doc_id: str, target_chars: int) -> Iterator[Document]:
    """Cut one long text into documents of one to two `target_chars` (single-file corpora).

    The documents concatenate back to the text. A cut goes after a blank line if there is one in
    the allowed range, else after a line break, else before a word.
    """
    target_chars = max(1, target_chars)
    hi = 2 * target_chars
    buf, n = "", 0
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        while len(buf) > hi:
            cut = buf.find("\n\n", target_chars, hi)
            if cut >= 0:
                cut += 2
            else:
                nl = buf.find("\n", target_chars, hi)
                cut = nl + 1 if nl >= 0 else _safe_cut(buf, target_chars, hi)
            yield Document(f"{doc_id}#{n}", list(rechunk([buf[:cut]])))
            buf, n = buf[cut:], n + 1
    if buf:
        yield Document(f"{doc_id}#{n}", list(rechunk([buf])))


def fingerprint_files(files: list[Path], names: list[str] | None = None) -> str:
    """Content hash of the files (names and bytes), so any edit invalidates caches."""
    h = hashlib.blake2b(digest_size=16)
    for f, name in zip(files, names or [f.name for f in files]):
        h.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def approx_text_bytes(files: list[Path]) -> int:
    # gzip is about 3x on text; the figure only decides how sparsely to sample for tokenizer training
    return sum(f.stat().st_size * (3 if f.name.endswith(".gz") else 1) for f in files)


# Files a plain-text corpus must not read as text: their structure (fields, markup, compression) would be
# tokenized as if it were prose. Name ending -> the data option that reads them.
STRUCTURED_SUFFIXES = {
    ".jsonl": "data=jsonl (data.text_field names the field)",
    ".jsonl.gz": "data=jsonl (data.text_field names the field)",
    ".json": "data=jsonl (one JSON object per line; data.text_field names the field)",
    ".ndjson": "data=jsonl (data.text_field names the field)",
    ".csv": "data=classification for labelled rows, or convert the text column to .txt",
    ".tsv": "data=pairs for (source, target) rows, data=classification for labelled rows",
    ".parquet": "data=hf (a Hugging Face dataset), or convert the text column to .txt or .jsonl",
    ".arrow": "data=hf (a Hugging Face dataset)",
    ".gz": "a .txt.gz name for gzipped text, or data=jsonl for .jsonl.gz",
    ".zip": "unpack it and point data.path at the folder",
}


class LocalFiles:
    """Files under `data.path` (a file, folder or glob): what the text and JSONL corpora share — resolving the
    path, refusing an empty corpus, size and fingerprint. Subclasses set `kind` and `suffixes` and turn files
    into documents; `_fingerprint_extra` adds what else changes their tokens."""

    kind = "files"
    suffixes: tuple[str, ...] = TEXT_SUFFIXES
    # name endings refused even when a file is named explicitly -> the option that reads it (TextFiles sets it)
    refused: dict[str, str] = {}

    def __init__(self, path: str, errors: str = "strict"):
        if errors not in ("strict", "replace", "ignore"):
            raise DataError(f"data.corpus.errors={errors!r}: choose one of strict, replace, ignore.")
        self.path = path
        self.errors = errors
        self._files: list[Path] | None = None
        self._fingerprint: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.path}"

    def files(self) -> list[Path]:
        if self._files is None:
            files = resolve_files(self.path, self.suffixes)
            for f in files:
                if not f.name.endswith(self.suffixes) and (
                    ending := next((e for e in self.refused if f.name.endswith(e)), None)
                ):
                    raise DataError(
                        f"data.path={self.path!r}: data={self.kind} reads plain text, and {f.name} is a {ending} "
                        f"file. Use {self.refused[ending]}."
                    )
            if all(f.stat().st_size == 0 for f in files):
                raise DataError(
                    f"data.path={self.path!r}: the corpus is empty ({len(files)} file(s), 0 bytes). Give it some text."
                )
            self._files = files
        return self._files

    def size_bytes(self) -> int:
        return approx_text_bytes(self.files())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = self.files()
            self._fingerprint = fingerprint_files(files, document_ids(files)) + self._fingerprint_extra()
        return self._fingerprint

    def _fingerprint_extra(self) -> str:
        return f":{self.errors}"

    def at(self, path: str):
        """The same kind of corpus, read from another `path` (data.test_path: a test split of its own)."""
        other = copy.copy(self)
        other.path, other._files, other._fingerprint = path, None, None
        return other


class TextFiles(LocalFiles):
    """Plain-text corpus. One document per file; a single file is cut into paragraph documents."""

    kind = "text"
    refused = STRUCTURED_SUFFIXES

    def documents(self) -> Iterator[Document]:
        files = self.files()
        if len(files) == 1:
            target = min(MAX_SPLIT_DOC_CHARS, self.size_bytes() // SPLIT_DOCS)
            yield from paragraph_documents(read_chunks(files[0], self.errors), files[0].name, target)
            return
        for f, doc_id in zip(files, document_ids(files)):
            # the file is opened only when the document's chunks are read
            yield Document(doc_id, rechunk(read_chunks(f, self.errors)))
