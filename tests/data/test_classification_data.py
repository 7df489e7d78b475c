"""data=classification: reading JSONL/CSV/TSV, the label set from the training file, splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.data.classification import ClassificationDataModule, class_prior_baseline, label_set, read_labelled
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import DataError
from lmforge.objectives.classification import ClassificationBatches, EncoderClassification


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(n: int, labels=("pos", "neg", "mid")) -> list[dict]:
    return [{"text": f"word{i % 7} thing{i % 3} and more", "label": labels[i % len(labels)]} for i in range(n)]


def module(tmp_path: Path, **kw) -> ClassificationDataModule:
    spec = TokenizerSpec(kind="wordpiece", vocab_size=120)
    dm = ClassificationDataModule(tokenizer=spec, cache_dir=str(tmp_path / "cache"), seq_len=16, batch_size=4, **kw)
    dm.build(EncoderClassification.special_tokens)
    return dm


def test_label_set_comes_from_the_training_file(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", rows(30, ("zebra", "apple")))
    val = jsonl(tmp_path / "val.jsonl", rows(6, ("apple",)))
    dm = module(tmp_path, path=str(train), val_path=str(val))
    assert dm.labels == ["apple", "zebra"]  # both from train, sorted; val has only one
    assert dm.train_label_counts == [15, 15]
    facts = dm.summary_facts()
    assert facts["data"]["labels"] == ["apple", "zebra"] and facts["data"]["val_examples"] == 6
    assert facts["baseline"]["chance_acc"] == 0.5 and facts["baseline"]["majority_val_acc"] in (0.0, 1.0)


def test_integer_labels_sort_numerically_and_unknown_val_labels_are_refused(tmp_path):
    assert label_set(read_labelled(jsonl(tmp_path / "a.jsonl", rows(20, (10, 2, 1))))) == ["1", "2", "10"]
    train = jsonl(tmp_path / "train.jsonl", rows(20, ("pos", "neg")))
    val = jsonl(tmp_path / "val.jsonl", rows(4, ("pos", "surprised")))
    with pytest.raises(DataError, match=r"val split has label\(s\) \['surprised'\] that the training file never uses"):
        module(tmp_path, path=str(train), val_path=str(val))


def test_csv_and_tsv_with_sentence_pairs_and_a_held_out_fraction(tmp_path):
    lines = ["premise,hypothesis,gold"] + [f"a{i} b c,d e{i},{'yes' if i % 2 else 'no'}" for i in range(40)]
    (tmp_path / "nli.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "nli.tsv").write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n")
    for name in ("nli.csv", "nli.tsv"):
        got = read_labelled(tmp_path / name, text_field="premise", text_pair_field="hypothesis", label_field="gold")
        assert len(got) == 40 and got[1].text == "a1 b c" and got[1].pair == "d e1" and got[1].label == "yes"
    dm = module(
        tmp_path,
        path=str(tmp_path / "nli.csv"),
        text_field="premise",
        text_pair_field="hypothesis",
        label_field="gold",
        val_fraction=0.25,
    )
    meta = dm.cache.meta
    assert meta["pairs"] and meta["examples"]["train"] + meta["examples"]["val"] == 40 and meta["examples"]["val"] > 0
    cls, sep = dm.special_ids["cls"], dm.special_ids["sep"]
    dm.set_batch_builder(ClassificationBatches(dm.special_ids["pad"], sep, cls, 16))
    batch = next(iter(dm.val_dataloader()))
    row, types = batch["input_ids"][0].tolist(), batch["token_type_ids"][0].tolist()
    first_sep = row.index(sep)
    assert row[0] == cls and set(types[: first_sep + 1]) == {0} and types[first_sep + 1] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n', r"b.jsonl:2: the line has no field 'text'"),
        ('{"text": "a", "label": ""}\n', r"b.jsonl:1: the label field 'label' is empty"),
        ('{"text": "a"}\n', r"b.jsonl:1: the line has no label field 'label'"),
        ('{"text": "a", "label": 1.5}\n', r"must be a string or an integer"),
        ("not json\n", r"b.jsonl:1: not valid JSON"),
    ],
)
def test_bad_lines_are_named(tmp_path, content, message):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        read_labelled(tmp_path / "b.jsonl")


def test_a_csv_header_without_the_fields_is_named(tmp_path):
    (tmp_path / "c.csv").write_text("sentence,label\nhi,1\n")
    with pytest.raises(DataError, match=r"c.csv:1: the header line \['sentence', 'label'\] lacks \['text'\]"):
        read_labelled(tmp_path / "c.csv")


def test_class_prior_baseline():
    b = class_prior_baseline([30, 10], [5, 5])
    assert b["chance_acc"] == 0.5 and b["majority_val_acc"] == 0.5
    assert b["class_prior_val_loss"] > 0.69  # worse than uniform on a balanced val set
