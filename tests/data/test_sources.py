"""Corpus sources: text files (streamed), JSON Lines, and Hugging Face `datasets` on local files."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lmforge.data.corpus import TextFiles, paragraph_documents, read_chunks
from lmforge.data.datamodule import LMDataModule
from lmforge.data.hf_datasets import HFDataset
from lmforge.data.jsonl import JsonlFiles
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import DataError
from lmforge.objectives.clm import PackedCausalBatches

EOS = {"eos": "<|endoftext|>"}


@pytest.fixture(scope="module")
def texts(text_corpus):
    return [f.read_text() for f in sorted(text_corpus.iterdir())]


def build(corpus, cache) -> LMDataModule:
    dm = LMDataModule(
        corpus=corpus, tokenizer=TokenizerSpec("bpe", 300), cache_dir=str(cache), seq_len=16, batch_size=4
    )
    dm.build(EOS)
    dm.set_batch_builder(PackedCausalBatches(16))
    return dm


def stream_text(dm) -> str:
    """All tokens of both splits decoded: the corpus text, documents separated by eos."""
    ids = np.concatenate([np.asarray(dm.cache.tokens(s)) for s in ("train", "val")]).tolist()
    return dm.tokenizer.decode(ids, skip_special_tokens=False)


def test_single_file_is_streamed_into_paragraph_documents_that_rebuild_it(tmp_path, texts):
    big = tmp_path / "one.txt"
    big.write_text("\n\n".join(texts))
    docs = list(TextFiles(str(big)).documents())
    assert 50 <= len(docs) <= 200  # about 100 documents, so a validation split exists
    assert "".join(d.text for d in docs) == big.read_text()
    # read in small pieces, the result is the same
    small = list(paragraph_documents(read_chunks(big, read_bytes=1000), "one.txt", 2000))
    assert "".join(d.text for d in small) == big.read_text()
    assert max(len(d.text) for d in small) <= 2 * 2000


def test_utf8_split_across_reads_and_bad_bytes_offset(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("é".encode() * 1000 + b"\xff" + b"tail")
    with pytest.raises(DataError, match="offset 2000"):
        list(read_chunks(f, read_bytes=7))  # reads end inside 2-byte characters
    assert "".join(read_chunks(f, "replace", read_bytes=7)) == "é" * 1000 + "\ufffdtail"


def test_text_folder_ids_are_relative_paths(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.txt").write_text(f"text of {sub}")
    assert [d.id for d in TextFiles(str(tmp_path)).documents()] == ["a/same.txt", "b/same.txt"]


def write_jsonl(path, texts, field="text", gz=False):
    lines = "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts))
    path.write_bytes(gzip.compress(lines.encode()) if gz else lines.encode())


def test_jsonl_corpus_tokenizes_every_line(tmp_path, texts):
    write_jsonl(tmp_path / "a.jsonl", texts[:4])
    write_jsonl(tmp_path / "b.jsonl.gz", texts[4:], gz=True)
    dm = build(JsonlFiles(str(tmp_path)), tmp_path / "cache")
    assert dm.cache.meta["documents"]["train"] + dm.cache.meta["documents"]["val"] == len(texts)
    assert sorted(stream_text(dm).split(EOS["eos"])[:-1]) == sorted(texts)


def test_jsonl_dotted_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"meta": {"body": "hello"}}\n\n{"meta": {"body": "world"}}\n')
    docs = list(JsonlFiles(str(tmp_path / "a.jsonl"), text_field="meta.body").documents())
    assert [(d.id, d.text) for d in docs] == [("a.jsonl:1", "hello"), ("a.jsonl:3", "world")]


@pytest.mark.parametrize(
    "content,expected",
    [
        (b'{"text": "ok"}\n{"body": "no text field"}\n', ["a.jsonl:2", "no field 'text'", "'body'"]),
        (b'{"text": "ok"}\n{"text": "ok"}\n{"text": broken\n', ["a.jsonl:3", "not a JSON object"]),
        (b'{"text": "ok"}\n{"text": 42}\n', ["a.jsonl:2", "int"]),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ["a.jsonl", "line 2", "offset 28", "data.corpus.errors=replace"]),
    ],
)
def test_jsonl_bad_lines_are_named(tmp_path, content, expected):
    (tmp_path / "a.jsonl").write_bytes(content)
    with pytest.raises(DataError) as err:
        list(JsonlFiles(str(tmp_path / "a.jsonl")).documents())
    for fragment in expected:
        assert fragment in str(err.value)


def test_jsonl_missing_path_and_empty(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        JsonlFiles(str(tmp_path / "nope.jsonl")).files()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        JsonlFiles(str(tmp_path / "empty.jsonl")).files()


def test_hf_datasets_parquet_and_json(tmp_path, texts):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": texts, "n": list(range(len(texts)))}), tmp_path / "c.parquet")
    corpus = HFDataset(str(tmp_path / "c.parquet"), text_field="content", cache_dir=str(tmp_path / "hf"))
    dm = build(corpus, tmp_path / "cache")
    assert sorted(stream_text(dm).split(EOS["eos"])[:-1]) == sorted(texts)
    assert corpus.name.startswith("hf:")

    (tmp_path / "j").mkdir()
    write_jsonl(tmp_path / "j" / "c.jsonl", texts)
    as_json = HFDataset(str(tmp_path / "j"), cache_dir=str(tmp_path / "hf"))
    assert [d.text for d in as_json.documents()] == texts


def test_hf_datasets_fingerprint_follows_content_and_bad_column_is_named(tmp_path, texts):
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "c.jsonl", texts)
    first = HFDataset(str(tmp_path / "c.jsonl"), cache_dir=str(tmp_path / "hf")).fingerprint()
    write_jsonl(tmp_path / "c.jsonl", texts[::-1])
    assert HFDataset(str(tmp_path / "c.jsonl"), cache_dir=str(tmp_path / "hf")).fingerprint() != first
    with pytest.raises(DataError, match="no column 'body'.*text, id"):
        HFDataset(str(tmp_path / "c.jsonl"), text_field="body", cache_dir=str(tmp_path / "hf")).fingerprint()
    with pytest.raises(DataError, match="no such file"):
        HFDataset(str(tmp_path / "missing.parquet"), cache_dir=str(tmp_path / "hf")).fingerprint()
