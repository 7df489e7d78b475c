"""Instruction data (data=instructions): both JSONL formats, the chat template, clear errors, the overlong policy."""

from __future__ import annotations

import json

import pytest

from lmforge.data.instructions import (
    DEFAULT_TEMPLATE,
    InstructionsDataModule,
    check_template,
    read_instructions,
    render,
    render_prompt,
)
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import ConfigError, DataError
from lmforge.objectives.clm import PackedCausalBatches
from lmforge.objectives.sft import SupervisedFineTuning

FIELDS = {"prompt": "prompt", "response": "response", "messages": "messages"}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_prompt_response_and_chat_messages_are_both_read(tmp_path):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "farewell"},
    ]
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"prompt": "say hi", "response": "hi"}, {"messages": chat}])
    examples = read_instructions(path, FIELDS)
    assert examples[0] == [("user", "say hi"), ("assistant", "hi")]
    assert examples[1] == [(m["role"], m["content"]) for m in chat]
    # field names are configurable
    write_jsonl(tmp_path / "b.jsonl", [{"q": "x", "a": "y"}, {"conv": [{"role": "assistant", "content": "z"}]}])
    renamed = read_instructions(tmp_path / "b.jsonl", {"prompt": "q", "response": "a", "messages": "conv"})
    assert renamed == [[("user", "x"), ("assistant", "y")], [("assistant", "z")]]


def test_template_renders_markers_untrained_and_every_response_with_eos_trained():
    t = check_template(None)
    segments = render([("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "ciao")], t)
    assert segments == [
        ("### Instruction:\nhi\n\n", False),
        ("### Response:\n", False),
        ("hello", True),
        (None, True),
        ("### Instruction:\nbye\n\n", False),
        ("### Response:\n", False),
        ("ciao", True),
        (None, True),
    ]
    # the generation prompt ends where a response starts in training
    assert render_prompt("hi", t) == "### Instruction:\nhi\n\n### Response:\n"
    custom = check_template({"user": "<|user|>\n{content}\n", "assistant": "<|assistant|>\n{content}\n"})
    assert custom["system"] == DEFAULT_TEMPLATE["system"]
    assert render([("assistant", "x")], custom) == [("<|assistant|>\n", False), ("x\n", True), (None, True)]


def test_bad_templates_are_config_errors():
    with pytest.raises(ConfigError, match=r"data.template.user=.*\{content\} exactly once"):
        check_template({"user": "no slot"})
    with pytest.raises(ConfigError, match="data.template.robot: unknown role"):
        check_template({"robot": "{content}"})


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"prompt": "a", "response": "b"}, {"prompt": "c"}], r"b\.jsonl:2: the line has no field 'response'"),
        ([{"prompt": "a", "response": 3}], r"b\.jsonl:1: the line has a non-string field 'response'"),
        ([{"messages": [{"role": "user", "content": "a"}]}], r"b\.jsonl:1: the last message must be the assistant"),
        ([{"messages": [{"role": "bot", "content": "a"}]}], r"b\.jsonl:1: message 0 must be an object with a role"),
        ([{"messages": []}], r"b\.jsonl:1: 'messages' must be a non-empty list"),
        ([], r"holds no examples \(an empty file\?\)"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, rows, match):
    path = tmp_path / "b.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=match):
        read_instructions(path, FIELDS)


def test_a_missing_file_and_a_missing_path_are_clear(tmp_path):
    with pytest.raises(DataError, match="data.path=.*no such file"):
        read_instructions(tmp_path / "missing.jsonl", FIELDS)
    with pytest.raises(ConfigError, match="data=instructions needs data.path"):
        InstructionsDataModule(TokenizerSpec("char", 64), str(tmp_path))


def module(tmp_path, path, **kw) -> InstructionsDataModule:
    return InstructionsDataModule(
        TokenizerSpec("char", 128, min_frequency=1), str(tmp_path / "cache"), path=path, val_fraction=0.5, **kw
    )


def test_overlong_examples_are_dropped_and_counted_or_refused(tmp_path):
    rows = [{"prompt": "p", "response": "r" * (20 if i % 4 == 0 else 2)} for i in range(40)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    dm = module(tmp_path, path, seq_len=48, batch_size=2)
    dm.build(SupervisedFineTuning.special_tokens)
    facts = dm.summary_facts()["data"]
    assert facts["dropped_overlong"] == 10  # every 4th: 34 template and prompt chars + 20 + eos > 48
    assert facts["train_examples"] + facts["val_examples"] == 30
    with pytest.raises(DataError, match=r"longer than data.seq_len=48 tokens .*data.overlong=drop"):
        module(tmp_path, path, seq_len=48, overlong="error").build(SupervisedFineTuning.special_tokens)
    with pytest.raises(DataError, match=r"every train example .* is longer than data.seq_len=8"):
        module(tmp_path, path, seq_len=8).build(SupervisedFineTuning.special_tokens)
    with pytest.raises(ConfigError, match="data.overlong='cut'"):
        module(tmp_path, path, overlong="cut")


def test_a_builder_that_cannot_collate_instructions_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}] * 8)
    dm = module(tmp_path, path, seq_len=64, batch_size=2)
    dm.build(SupervisedFineTuning.special_tokens)
    with pytest.raises(ConfigError, match="use model=gpt_sft or model=llama_sft"):
        dm.set_batch_builder(PackedCausalBatches(block_len=32, eos_id=0))


def test_batches_are_padded_examples_with_real_token_counts(tmp_path):
    rows = [{"prompt": "ab" * (i % 3 + 1), "response": "xyz"[: i % 3 + 1]} for i in range(40)]
    dm = module(tmp_path, write_jsonl(tmp_path / "a.jsonl", rows), seq_len=64, batch_size=4)
    dm.build(SupervisedFineTuning.special_tokens)
    from lmforge.objectives.sft import SFTBatches

    dm.set_batch_builder(SFTBatches(block_len=64, eos_id=dm.special_ids["eos"], pad_id=dm.special_ids["pad"]))
    train = dm._split("train")
    assert dm.block_len == round(float(train.lengths.mean()))
    seen = 0
    for batch in dm.train_dataloader():
        assert batch["num_tokens"] == int(batch["attention_mask"].sum())
        seen += batch["num_tokens"]
    assert seen == int(train.lengths.sum())  # every real token once an epoch; padding not counted
