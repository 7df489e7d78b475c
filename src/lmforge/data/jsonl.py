"""JSON Lines corpora: one JSON object per line, the text in a configurable field.

`data=jsonl data.path=<file | folder | glob> data.text_field=text` (`.jsonl`, `.jsonl.gz`, `.json`
holding one object per line). Each line is a document. A line without the field, a line that
is not JSON, or bytes that are not UTF-8 stop the build with the file and line named.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.corpus import Document, LocalFiles, bad_utf8, document_ids, open_binary, rechunk
from lmforge.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def field_of(obj, field: str):
    """`obj[field]`, where a dotted field (`meta.text`) walks into nested objects."""
    for part in field.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


class JsonlFiles(LocalFiles):
    kind = "jsonl"
    suffixes = JSONL_SUFFIXES

    def __init__(self, path: str, text_field: str = "text", errors: str = "strict"):
        super().__init__(path, errors)
        if not text_field:
            raise DataError("data.text_field is empty; name the JSON field that holds the text (e.g. text).")
        self.text_field = text_field

    def _fingerprint_extra(self) -> str:
        return f":{self.text_field}:{self.errors}"

    def documents(self) -> Iterator[Document]:
        files = self.files()
        for f, file_id in zip(files, document_ids(files)):
            for lineno, text in self._texts(f):
                yield Document(f"{file_id}:{lineno}", rechunk([text]))

    def _texts(self, path: Path) -> Iterator[tuple[int, str]]:
        offset = 0
        try:
            with open_binary(path) as fh:
                for lineno, raw in enumerate(fh, 1):
                    start, offset = offset, offset + len(raw)
                    if not raw.strip():
                        continue
                    try:
                        line = raw.decode("utf-8", errors=self.errors)
                    except UnicodeDecodeError as e:
                        raise bad_utf8(path, start + e.start, raw[e.start], f" (line {lineno})") from None
                    yield lineno, self._text_of(line, path, lineno)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot read {path}: {e}") from None

    def _text_of(self, line: str, path: Path, lineno: int) -> str:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not a JSON object ({e.msg} at column {e.colno}). "
                "Each line of a JSONL file must be one JSON object."
            ) from None
        try:
            text = field_of(obj, self.text_field)
        except KeyError:
            present = ", ".join(map(repr, obj)) if isinstance(obj, dict) else f"a {type(obj).__name__}, not an object"
            raise DataError(
                f"{path}:{lineno}: no field {self.text_field!r} (data.text_field); the line has: {present}."
            ) from None
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{lineno}: field {self.text_field!r} holds {type(text).__name__} {str(text)[:40]!r}, not text."
            )
        return text
