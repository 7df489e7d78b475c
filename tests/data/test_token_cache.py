"""The token cache: exact packing across shards, its key, concurrent builds, and failures that leave nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from lmforge.data.corpus import TextFiles
from lmforge.data.datamodule import LMDataModule
from lmforge.data.token_cache import ShardedTokens
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import DataError
from lmforge.objectives.clm import PackedCausalBatches

EOS = {"eos": "<|endoftext|>"}


def make_dm(corpus, cache, block=16, tokenizer=None, **kw) -> LMDataModule:
    dm = LMDataModule(
        corpus=TextFiles(str(corpus)),
        tokenizer=tokenizer or TokenizerSpec("bpe", 300),
        cache_dir=str(cache),
        seq_len=block,
        batch_size=4,
        **kw,
    )
    dm.build(EOS)
    dm.set_batch_builder(PackedCausalBatches(block))
    return dm


def entries(cache):
    """Finished entries and anything else (temp folders, locks) under the cache's tokens/ folder."""
    root = cache / "tokens"
    names = sorted(p.name for p in root.iterdir()) if root.exists() else []
    return [n for n in names if not n.startswith(".")], [
        n for n in names if n.startswith(".") and not n.endswith(".lock")
    ]


def test_blocks_across_shards_concatenate_to_the_document_stream(text_corpus, tmp_path):
    dm = make_dm(text_corpus, tmp_path, block=16, shard_tokens=1000)
    tok = dm.tokenizer
    assert len(dm.cache.meta["shards"]["train"]) > 5 and max(dm.cache.meta["shards"]["train"]) == 1000
    train = np.asarray(dm.cache.tokens("train"))
    # the stream is each document's tokens followed by eos, documents in corpus order
    docs = {f.name: f.read_text() for f in text_corpus.iterdir()}
    eos = dm.special_ids["eos"]
    pieces = np.split(train, np.flatnonzero(train == eos) + 1)[:-1]
    expected = {tuple(tok.encode(t, add_special_tokens=False).ids) + (eos,) for t in docs.values()}
    assert all(tuple(p) in expected for p in pieces) and len(pieces) == dm.cache.meta["documents"]["train"]
    # blocks: the stream cut into consecutive non-overlapping pieces, across shard boundaries
    ds = dm._dataset("train")
    blocks = np.concatenate([ds[i] for i in range(len(ds))])
    assert np.array_equal(blocks, train[: len(blocks)]) and len(train) - len(blocks) < 16


def test_sharded_tokens_slices_like_an_array(tmp_path):
    data = np.arange(1000, dtype=np.uint16)
    paths = []
    for i, (a, b) in enumerate([(0, 300), (300, 301), (301, 1000)]):
        paths.append(tmp_path / f"{i}.bin")
        data[a:b].tofile(paths[-1])
    tokens = ShardedTokens(paths, "uint16")
    assert len(tokens) == 1000 and np.array_equal(np.asarray(tokens), data)
    for a, b in [(0, 1000), (299, 302), (300, 301), (5, 5), (990, 2000)]:
        assert np.array_equal(tokens[a:b], data[a:b])
    assert tokens[-1] == 999 and tokens[300] == 300


def test_cache_key_covers_content_tokenizer_and_settings(text_corpus, tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for f in text_corpus.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())
    cache = tmp_path / "cache"
    first = make_dm(corpus, cache).cache.dir
    assert make_dm(corpus, cache).cache.dir == first  # reused
    variants = [
        make_dm(corpus, cache, val_fraction=0.3),
        make_dm(corpus, cache, split_seed=1),
        make_dm(corpus, cache, token_dtype="uint32"),
        make_dm(corpus, cache, tokenizer=TokenizerSpec("bpe", 320)),
        make_dm(corpus, cache, tokenizer=TokenizerSpec("char", 300)),
    ]
    dirs = {first, *(dm.cache.dir for dm in variants)}
    assert len(dirs) == 6
    assert variants[2].cache.meta["dtype"] == "uint32"
    assert np.array_equal(
        np.asarray(variants[2].cache.tokens("train")), np.asarray(make_dm(corpus, cache).cache.tokens("train"))
    )
    (corpus / "doc00.txt").write_text("changed content " * 100)
    assert make_dm(corpus, cache).cache.dir not in dirs
    assert make_dm(corpus, cache, seed=7).cache.dir == make_dm(corpus, cache).cache.dir


WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from lmforge.data.corpus import TextFiles
    from lmforge.data.datamodule import LMDataModule
    from lmforge.data.tokenizer import TokenizerSpec
    corpus, cache, go = sys.argv[1:4]
    Path(go + f".ready{os.getpid()}").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    dm = LMDataModule(corpus=TextFiles(corpus), tokenizer=TokenizerSpec("bpe", 400), cache_dir=cache)
    dm.build({"eos": "<|endoftext|>"})
    print(json.dumps({"pid": os.getpid(), "dir": str(dm.cache.dir), "built_by": dm.cache.meta["build"]["pid"],
                      "tokens": dm.cache.meta["tokens"]}))
""")


@pytest.mark.distributed
def test_two_processes_building_the_same_cache_at_once(tmp_path):
    from conftest import write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "corpus", n_files=16, words_per_file=20000)
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(corpus), str(cache), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(2)
    ]
    deadline = time.time() + 60
    while len(list(tmp_path.glob("go.ready*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # both start building the same tokenizer and token cache now
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert a["dir"] == b["dir"] and a["tokens"] == b["tokens"]
    assert a["built_by"] == b["built_by"] in (a["pid"], b["pid"])  # one built, the other waited and reused it
    assert entries(cache) == ([os.path.basename(a["dir"])], [])
    assert len(list((cache / "tokenizers").glob("bpe-*"))) == 1


def test_vocabulary_too_large_for_the_token_dtype_fails_before_training(text_corpus, tmp_path):
    with pytest.raises(DataError, match=r"data.token_dtype=uint16.*uint32"):
        make_dm(text_corpus, tmp_path, tokenizer=TokenizerSpec("bpe", 70000), token_dtype="uint16")
    assert not (tmp_path / "tokenizers").exists()  # stopped before training a tokenizer
    # an existing tokenizer with 70k ids: too big for uint16, fine with auto (uint32)
    vocab = {f"w{i}": i for i in range(70000)}
    vocab["<|endoftext|>"] = 70000
    big = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    big.save(str(tmp_path / "big.json"))
    spec = TokenizerSpec(kind="file", path=str(tmp_path / "big.json"))
    with pytest.raises(DataError, match="70,001 tokens"):
        make_dm(text_corpus, tmp_path, tokenizer=spec, token_dtype="uint16")
    assert entries(tmp_path) == ([], [])
    assert make_dm(text_corpus, tmp_path, tokenizer=spec).cache.meta["dtype"] == "uint32"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("   \n\n  ")
    (tmp_path / "c" / "b.txt").write_text("\n")
    with pytest.raises(DataError, match="empty after tokenization"):
        make_dm(tmp_path / "c", tmp_path / "cache")
    assert entries(tmp_path / "cache") == ([], [])


def test_corpus_with_one_document_cannot_be_split(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("some words " * 100)
    (tmp_path / "c" / "b.txt").write_text("")
    with pytest.raises(DataError, match="fewer than 2 documents"):
        make_dm(tmp_path / "c", tmp_path / "cache")
    assert entries(tmp_path / "cache") == ([], [])
