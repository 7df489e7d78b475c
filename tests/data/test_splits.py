"""The three-way split (train / val / test) by document: disjoint, seeded, the same for every data kind, and with
no test split exactly the two-way split (and cache entries) lmforge made before there was a test split."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import write_synthetic_corpus

from lmforge.data.corpus import TextFiles
from lmforge.data.datamodule import LMDataModule
from lmforge.data.pairs import PairsDataModule
from lmforge.data.token_cache import split_of, splits_of
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import ConfigError, DataError
from lmforge.objectives.clm import PackedCausalBatches
from lmforge.objectives.seq2seq import Seq2SeqLM

EOS = {"eos": "<|endoftext|>"}


def lm_data(corpus, cache, **kw) -> LMDataModule:
    dm = LMDataModule(
        corpus=TextFiles(str(corpus)), tokenizer=TokenizerSpec("bpe", 300), cache_dir=str(cache), seq_len=16,
        batch_size=4, **kw,
    )  # fmt: skip
    dm.build(EOS)
    dm.set_batch_builder(PackedCausalBatches(16))
    return dm


def digest(tokens) -> str:
    return hashlib.blake2b(np.asarray(tokens).tobytes(), digest_size=8).hexdigest()


def test_three_splits_are_disjoint_cover_every_document_and_are_seeded():
    ids = [f"doc{i}" for i in range(400)]
    labels = splits_of(ids, 0.1, seed=0, test_fraction=0.15)
    by = {s: {d for d, k in zip(ids, labels) if k == s} for s in ("train", "val", "test")}
    assert by["train"] | by["val"] | by["test"] == set(ids)
    assert not (by["train"] & by["val"]) and not (by["train"] & by["test"]) and not (by["val"] & by["test"])
    assert (len(by["val"]), len(by["test"])) == (40, 60)
    # deterministic: by id, whatever the order the documents come in; another seed deals differently
    again = splits_of(list(reversed(ids)), 0.1, seed=0, test_fraction=0.15)
    assert dict(zip(reversed(ids), again)) == dict(zip(ids, labels))
    assert splits_of(ids, 0.1, seed=1, test_fraction=0.15) != labels
    # a test split takes its documents from train: val is the one the two-way split picks
    assert by["val"] == split_of(ids, 0.1, seed=0)
    # at least one document per split asked for
    assert sorted(splits_of(["a", "b", "c"], 0.01, 0, test_fraction=0.01)) == ["test", "train", "val"]


def test_without_a_test_split_the_cache_entry_and_tokens_are_the_ones_made_before_test_splits(text_corpus, tmp_path):
    # Measured with the code before data.test_fraction existed (commit da24d1d), on this corpus and tokenizer:
    # the same cache key (existing entries stay valid) and the same train/val tokens.
    dm = lm_data(text_corpus, tmp_path / "cache")
    assert dm.cache is not None and dm.cache.dir.name == "1d55436c1b78072b0ae8"
    assert (len(dm.cache.tokens("train")), digest(dm.cache.tokens("train"))) == (59845, "8b0771d130b0642a")
    assert (len(dm.cache.tokens("val")), digest(dm.cache.tokens("val"))) == (8579, "5590d99a8ec969d3")
    assert not dm.has_test and "test" not in dm.cache.meta["tokens"]
    assert "test_tokens" not in dm.summary_facts()["data"]
    with pytest.raises(ConfigError, match="no test split"):
        dm.test_dataloader()


def test_a_test_fraction_holds_out_whole_documents_from_train_only(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "c", n_files=20, words_per_file=600)
    two = lm_data(corpus, tmp_path / "cache")
    three = lm_data(corpus, tmp_path / "cache", test_fraction=0.2)
    assert two.cache is not None and three.cache is not None and three.cache.dir != two.cache.dir
    meta = three.cache.meta
    assert meta["documents"] == {"train": 15, "val": 1, "test": 4}
    # val is untouched; train and test together are the old train, nothing lost or duplicated
    assert digest(three.cache.tokens("val")) == digest(two.cache.tokens("val"))
    assert meta["tokens"]["train"] + meta["tokens"]["test"] == two.cache.meta["tokens"]["train"]
    # each test document's tokens appear in the test split and not in train (documents differ in content)
    docs = np.asarray(three.cache.tokens("test"))
    train = np.asarray(three.cache.tokens("train")).tobytes()
    eos = three.special_ids["eos"]
    pieces = np.split(docs, np.flatnonzero(docs == eos) + 1)[:-1]
    assert len(pieces) == 4 and all(p[:64].tobytes() not in train for p in pieces)
    assert three.has_test and 0 < meta["unigram_test_loss"] < 10
    facts = three.summary_facts()
    assert facts["data"]["test_tokens"] == meta["tokens"]["test"]
    assert facts["baseline"]["unigram_test_loss"] == meta["unigram_test_loss"]
    batch = next(iter(three.test_dataloader()))
    assert batch["input_ids"].shape == (4, 16)
    # the same settings give the same entry (seeded), read back from the cache
    assert lm_data(corpus, tmp_path / "cache", test_fraction=0.2).cache.dir == three.cache.dir  # type: ignore[union-attr]


def test_a_test_path_is_a_test_split_of_its_own(tmp_path, text_corpus):
    held_out = write_synthetic_corpus(tmp_path / "held", n_files=2, words_per_file=500, seed=7)
    base = lm_data(text_corpus, tmp_path / "cache")
    dm = lm_data(text_corpus, tmp_path / "cache", test_path=str(held_out))
    assert base.cache is not None and dm.cache is not None
    assert digest(dm.cache.tokens("train")) == digest(base.cache.tokens("train"))
    assert digest(dm.cache.tokens("val")) == digest(base.cache.tokens("val"))
    eos = dm.special_ids["eos"]
    # every document of the test corpus, in order, each followed by eos; none of it in train or val
    expected = [i for f in sorted(held_out.iterdir()) for i in [*dm.tokenizer.encode(f.read_text()).ids, eos]]
    got = np.asarray(dm.cache.tokens("test")).tolist()
    assert got == expected
    assert got.count(eos) == 2 and dm.cache.meta["documents"]["test"] == 2


def test_bad_split_settings_are_named(tmp_path, text_corpus):
    with pytest.raises(ConfigError, match="data.test_fraction=0.1 and data.test_path are both set"):
        lm_data(text_corpus, tmp_path / "cache", test_fraction=0.1, test_path=str(text_corpus))
    with pytest.raises(DataError, match="leave no documents to train on"):
        lm_data(text_corpus, tmp_path / "cache", val_fraction=0.5, test_fraction=0.5)
    (tmp_path / "two").mkdir()
    for n in "ab":
        (tmp_path / "two" / f"{n}.txt").write_text("words and more words " * 50)
    with pytest.raises(DataError, match="train/validation/test split needs at least 3"):
        lm_data(tmp_path / "two", tmp_path / "cache", test_fraction=0.1)


def write_pairs(path, n: int):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"source": f"source number {i}", "target": f"target {i} words"}) + "\n")
    return path


def pairs_data(path, cache, **kw) -> PairsDataModule:
    dm = PairsDataModule(path=str(path), tokenizer=TokenizerSpec("bpe", 400), cache_dir=str(cache), **kw)
    dm.build(Seq2SeqLM.special_tokens)
    return dm


def test_pairs_test_split_by_pair_shares_the_mechanism_and_keeps_old_entries(tmp_path):
    path = write_pairs(tmp_path / "pairs.jsonl", 200)
    two = pairs_data(path, tmp_path / "cache", val_fraction=0.1)
    three = pairs_data(path, tmp_path / "cache", val_fraction=0.1, test_fraction=0.1)
    assert two.cache is not None and three.cache is not None
    assert "test" not in two.cache.meta["pairs"] and not two.has_test
    assert two.cache.dir.name == "b71826524b736f80df91"  # the entry the code before test splits made (da24d1d)
    assert three.cache.meta["pairs"] == {"train": 160, "val": 20, "test": 20}
    texts = {s: set(json.loads((three.cache.dir / f"{s}.targets.json").read_text())) for s in ("val", "test")}
    # the pairs of each split are those the shared split (token_cache.splits_of) deals, by pair index
    labels = splits_of([str(i) for i in range(200)], 0.1, 0, test_fraction=0.1)
    for split in ("val", "test"):
        assert texts[split] == {f"target {i} words" for i, k in enumerate(labels) if k == split}
    assert texts["val"] == set(json.loads((two.cache.dir / "val.targets.json").read_text()))  # val unchanged
    assert three.has_test and 0 < three.cache.meta["unigram_test_loss"] < 10
    # a separate test file, with a separate val file or a split of data.path for val
    test_file = write_pairs(tmp_path / "test.jsonl", 7)
    own = pairs_data(path, tmp_path / "cache", val_fraction=0.1, test_path=str(test_file))
    assert own.cache is not None and own.cache.meta["pairs"] == {"train": 180, "val": 20, "test": 7}
    val_file = write_pairs(tmp_path / "val.jsonl", 5)
    both = pairs_data(path, tmp_path / "cache", val_path=str(val_file), test_fraction=0.1)
    assert both.cache is not None and both.cache.meta["pairs"] == {"train": 180, "val": 5, "test": 20}
    with pytest.raises(ConfigError, match="both set"):
        pairs_data(path, tmp_path / "cache", test_fraction=0.1, test_path=str(test_file))


def test_test_path_reads_the_same_kind_of_corpus(tmp_path):
    """data.test_path is read as data.path is: JSONL with its text field, a Hugging Face dataset with its settings."""
    from lmforge.data.hf_datasets import HFDataset
    from lmforge.data.jsonl import JsonlFiles

    rows = [{"body": {"text": f"line {i} of the held out file"}} for i in range(3)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = JsonlFiles(str(tmp_path / "train.jsonl"), text_field="body.text")
    held = corpus.at(str(tmp_path / "test.jsonl"))
    assert isinstance(held, JsonlFiles) and held.path.endswith("test.jsonl") and corpus.path.endswith("train.jsonl")
    assert [d.text for d in held.documents()] == [r["body"]["text"] for r in rows]
    pytest.importorskip("datasets")
    hf = HFDataset(str(tmp_path / "train.jsonl"), text_field="body.text", cache_dir=str(tmp_path / "hf"))
    held_hf = hf.at(str(tmp_path / "test.jsonl"))
    assert held_hf.text_field == "body.text" and held_hf.path.endswith("test.jsonl")
