"""Test splits of the padded data kinds (data=classification, data=instructions and the bundled tasks on them):
data.test_fraction takes whole examples from train (val stays what it was), data.test_path is a split of its own,
test_dataloader() serves it, and bad settings stop before anything is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.data.classification import ClassificationDataModule
from lmforge.data.instructions import InstructionsDataModule
from lmforge.data.padded import deal_splits
from lmforge.data.reverse_words import ReverseWords
from lmforge.data.shakespeare_genre import GENRES, ShakespeareGenre
from lmforge.data.token_cache import splits_of
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import ConfigError, DataError
from lmforge.objectives.classification import ClassificationBatches, EncoderClassification
from lmforge.objectives.sft import SFTBatches, SupervisedFineTuning


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labelled(n: int, start: int = 0) -> list[dict]:
    """Examples whose text names their index: which split an example went to is read back from its tokens."""
    return [{"text": f"item {i}", "label": ("pos", "neg")[i % 2]} for i in range(start, start + n)]


def classification(tmp_path: Path, **kw) -> ClassificationDataModule:
    dm = ClassificationDataModule(
        tokenizer=TokenizerSpec("char", 128, min_frequency=1),
        cache_dir=str(tmp_path / "cache"),
        seq_len=16,
        batch_size=4,
        **kw,
    )
    dm.build(EncoderClassification.special_tokens)
    ids = dm.special_ids
    dm.set_batch_builder(ClassificationBatches(ids["pad"], ids["sep"], ids["cls"], 16))
    return dm


def texts_of(dm, split: str) -> set[str]:
    """The examples' texts of a split as the loader serves them (decoded, special tokens dropped)."""
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return {dm.tokenizer.decode(row.tolist()) for batch in loader for row in batch["input_ids"]}


def test_classification_test_fraction_holds_out_training_examples_only(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", labelled(200))
    two = classification(tmp_path, path=str(path))
    three = classification(tmp_path, path=str(path), test_fraction=0.2)
    assert two.cache is not None and three.cache is not None and two.cache.dir != three.cache.dir
    assert not two.has_test and three.has_test
    with pytest.raises(ConfigError, match="no test split"):
        two.test_dataloader()
    assert three.cache.meta["examples"] == {"train": 140, "val": 20, "test": 40}
    by = {s: texts_of(three, s) for s in ("train", "val", "test")}
    assert not (by["train"] & by["test"]) and not (by["val"] & by["test"]) and not (by["train"] & by["val"])
    assert len(by["test"]) == 40 and by["val"] == texts_of(two, "val")  # val is the one the two-way split made
    assert by["train"] | by["test"] == texts_of(two, "train")  # nothing lost or duplicated
    # the examples of each split are those the shared split deals (token_cache.splits_of), by index
    labels = splits_of([str(i) for i in range(200)], 0.1, 0, test_fraction=0.2)
    assert by["test"] == {f"item {i}" for i, k in enumerate(labels) if k == "test"}
    facts = three.summary_facts()
    assert facts["data"]["test_examples"] == 40 and sum(facts["data"]["test_label_counts"]) == 40
    assert facts["data"]["test_tokens"] == three.cache.meta["tokens"]["test"]
    assert 0 < facts["baseline"]["unigram_test_loss"] == facts["baseline"]["class_prior_test_loss"]
    assert "test_examples" not in two.summary_facts()["data"]


def test_classification_test_path_is_a_split_of_its_own_with_the_training_labels(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", labelled(100))
    test = jsonl(tmp_path / "test.jsonl", labelled(7, start=1000))
    dm = classification(tmp_path, path=str(path), test_path=str(test))
    assert dm.cache is not None and dm.cache.meta["examples"] == {"train": 90, "val": 10, "test": 7}
    assert texts_of(dm, "test") == {f"item {i}" for i in range(1000, 1007)}
    unseen = jsonl(tmp_path / "unseen.jsonl", [{"text": "item 5", "label": "angry"}])
    with pytest.raises(DataError, match=r"the test split has label\(s\) \['angry'\] that the training file never"):
        classification(tmp_path, path=str(path), test_path=str(unseen))
    no_text = jsonl(tmp_path / "broken.jsonl", [{"label": "pos"}])
    with pytest.raises(DataError, match=r"broken.jsonl:1: the line has no field 'text'"):
        classification(tmp_path, path=str(path), test_path=str(no_text))


def instructions(tmp_path: Path, path: str | None, **kw) -> InstructionsDataModule:
    dm = InstructionsDataModule(
        TokenizerSpec("char", 128, min_frequency=1), str(tmp_path / "cache"), path=path, seq_len=160, batch_size=4, **kw
    )
    dm.build(SupervisedFineTuning.special_tokens)
    dm.set_batch_builder(SFTBatches(block_len=160, eos_id=dm.special_ids["eos"], pad_id=dm.special_ids["pad"]))
    return dm


def prompts_of(dm: InstructionsDataModule, split: str) -> set[str]:
    data = dm._split(split)
    return {dm.tokenizer.decode(data[i].ids[: data[i].response_start].tolist()) for i in range(len(data))}


def test_instructions_test_fraction_and_test_path(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(100)]
    path = str(jsonl(tmp_path / "sft.jsonl", rows))
    two = instructions(tmp_path, path, val_fraction=0.1)
    three = instructions(tmp_path, path, val_fraction=0.1, test_fraction=0.2)
    assert not two.has_test and three.has_test
    by = {s: prompts_of(three, s) for s in ("train", "val", "test")}
    assert (len(by["train"]), len(by["val"]), len(by["test"])) == (70, 10, 20)
    assert not (by["train"] & by["test"]) and not (by["val"] & by["test"])
    assert by["val"] == prompts_of(two, "val") and by["train"] | by["test"] == prompts_of(two, "train")
    batch = next(iter(three.test_dataloader()))
    assert batch["input_ids"].size(0) == 4 and "response_start" in batch  # what val/exact_match decodes from
    facts = three.summary_facts()
    assert facts["data"]["test_examples"] == 20 and 0 < facts["baseline"]["unigram_test_loss"] < 10
    test = jsonl(tmp_path / "test.jsonl", [{"prompt": f"held {i}", "response": "x"} for i in range(5)])
    own = instructions(tmp_path, path, val_fraction=0.1, test_path=str(test))
    assert len(prompts_of(own, "test")) == 5 and prompts_of(own, "val") == by["val"]


def test_a_generated_task_is_split_three_ways_by_example(tmp_path):
    """data=reverse_words (a list of generated examples) through the same split: by index, disjoint."""
    source = ReverseWords(n_examples=200, seed=3)
    data = deal_splits(source.read(), 0.05, 0.1, seed=0)
    assert [len(data[s]) for s in ("train", "val", "test")] == [170, 10, 20]
    dm = instructions(tmp_path, None, source=source, val_fraction=0.05, test_fraction=0.1)
    assert dm.has_test and len(dm._split("test")) == 20 and len(dm._split("val")) == 10


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"test_fraction": 1.5}, r"data.test_fraction=1.5 must be at least 0 \(no test split\) and below 1"),
        ({"test_fraction": -0.1}, r"data.test_fraction=-0.1 must be at least 0"),
        ({"test_fraction": 0.95}, "leave no examples to train on"),
        ({"test_fraction": 0.1, "test_path": "x.jsonl"}, "both set"),
        ({"test_path": "missing.jsonl"}, r"data.test_path='missing.jsonl': no such file"),
    ],
)
@pytest.mark.parametrize("kind", ["classification", "instructions"])
def test_bad_test_settings_stop_before_anything_is_read(tmp_path, kind, kw, match):
    cls = ClassificationDataModule if kind == "classification" else InstructionsDataModule
    # data.path does not exist either: the test settings are checked first, when the module is made
    with pytest.raises(ConfigError, match=match):
        cls(tokenizer=TokenizerSpec("char", 64), cache_dir=str(tmp_path), path=str(tmp_path / "none.jsonl"), **kw)


def test_the_genre_demo_holds_out_test_plays_and_refuses_a_test_fraction(tmp_path):
    plain = ShakespeareGenre(str(tmp_path))
    source = ShakespeareGenre(str(tmp_path), test_plays_per_genre=2)
    val, test = source.val_plays(), source.test_plays()
    assert val == plain.val_plays()  # a test split leaves validation's plays as they were
    assert source.fingerprint() != plain.fingerprint()
    for genre, plays in GENRES.items():
        assert len(test[genre]) == 2 and set(test[genre]) <= set(plays) and not set(test[genre]) & set(val[genre])
    with pytest.raises(ConfigError, match="test_plays_per_genre=8 must be 0"):
        ShakespeareGenre(str(tmp_path), test_plays_per_genre=8)
    with pytest.raises(ConfigError, match=r"makes its own split; hold out a test split with data.source.test_plays"):
        ClassificationDataModule(TokenizerSpec("char", 64), str(tmp_path), source=plain, test_fraction=0.1)
