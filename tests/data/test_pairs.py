"""Supervised seq2seq pairs: JSONL/TSV sources, clear errors, length bucketing, and `data=pairs` end to end."""

from __future__ import annotations

import gzip
import json
import random

import pytest
from conftest import TINY, WORDS, run_dir_from_output, run_train
from torch.utils.data import RandomSampler, SequentialSampler

from lmforge.data.padded import LengthBuckets
from lmforge.data.pairs import PairsDataModule, read_pairs
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.errors import ConfigError, DataError
from lmforge.objectives.seq2seq import Seq2SeqLM


def reversal_lines(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        out.append({"source": " ".join(words), "target": " ".join(reversed(words)), "id": len(out)})
    return out


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_jsonl_tsv_header_and_gzip_read_the_same_pairs(tmp_path):
    rows = reversal_lines(5)
    expected = [(r["source"], r["target"]) for r in rows]
    write_jsonl(tmp_path / "a.jsonl", rows)
    assert read_pairs(tmp_path / "a.jsonl") == expected
    (tmp_path / "b.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in expected))
    assert read_pairs(tmp_path / "b.tsv") == expected
    rows_with_header = "".join(f"{i}\t{t}\t{s}\n" for i, (s, t) in enumerate(expected))
    (tmp_path / "c.tsv").write_text("id\ttarget\tsource\n" + rows_with_header)
    assert read_pairs(tmp_path / "c.tsv") == expected
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"de": s, "en": t}) + "\n\n" for s, t in expected))
    assert read_pairs(tmp_path / "d.jsonl.gz", source_field="de", target_field="en") == expected


def test_bad_pairs_files_name_the_line(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"source": "a", "target": "b"}, {"source": "c", "tgt": "d"}])
    with pytest.raises(DataError, match=r"a\.jsonl:2: the line has no field 'target' \(fields: \['source', 'tgt'\]\)"):
        read_pairs(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"source": "a", "target": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: not valid JSON"):
        read_pairs(tmp_path / "b.jsonl")
    (tmp_path / "c.tsv").write_text("a\tb\nonly one column\n")
    with pytest.raises(DataError, match=r"c\.tsv:2: expected 'source<TAB>target'"):
        read_pairs(tmp_path / "c.tsv")
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="data.format"):
        read_pairs(tmp_path / "d.csv")


def test_length_buckets_group_similar_lengths_and_cover_every_pair_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(1000)]
    batches = list(LengthBuckets(RandomSampler(range(1000)), 10, lengths=lengths, bucket_size=20))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10, spread  # random batches of 10 would spread over ~80
    # Batches of the same lengths are not always served shortest first.
    firsts = [min(lengths[i] for i in b) for b in batches[:10]]
    assert firsts != sorted(firsts)
    val = list(LengthBuckets(SequentialSampler(range(1000)), 10, lengths=lengths, bucket_size=None, shuffle=False))
    assert val == list(
        LengthBuckets(SequentialSampler(range(1000)), 10, lengths=lengths, bucket_size=None, shuffle=False)
    )


def test_pairs_datamodule_serves_padded_batches_with_references(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", reversal_lines(400))
    dm = PairsDataModule(
        path=path,
        tokenizer=TokenizerSpec(kind="bpe", vocab_size=400),
        cache_dir=str(tmp_path / "c"),
        seq_len=16,
        max_target_len=16,
        batch_size=8,
        val_fraction=0.1,
    )
    dm.build(Seq2SeqLM.special_tokens)
    assert dm.cache.meta["pairs"] == {"train": 360, "val": 40}
    assert 0 < dm.cache.meta["unigram_val_loss"] < 10
    with pytest.raises(ConfigError, match="model=t5"):
        dm.set_batch_builder(object())
    from lmforge.models.t5 import T5

    model = Seq2SeqLM(net=T5(vocab_size=448, d_model=16, d_kv=4, d_ff=16, n_layer=1, n_head=2), optimizer=None)
    dm.set_batch_builder(model.batch_builder(16, dm.special_ids, tokenizer=dm.tokenizer))
    val = list(dm.val_dataloader())
    assert sum(len(b["target_text"]) for b in val) == 40
    b = val[0]
    eos = dm.special_ids["eos"]
    for i, text in enumerate(b["target_text"]):
        ids = [t for t in b["labels"][i].tolist() if t != -100]
        assert ids[-1] == eos and dm.tokenizer.decode(ids[:-1]) == text
    train = next(iter(dm.train_dataloader()))
    assert "target_text" not in train and train["input_ids"].shape[0] == 8


def test_t5_trains_on_pairs_and_reports_bleu(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", reversal_lines(600))
    args = [
        "model=t5_tiny",
        *[a for a in TINY if not a.startswith("model=")],
        "data=pairs",
        f"data.path={path}",
        "data.val_fraction=0.1",
        "trainer.max_steps=20",
        "logger=csv",
        "model.num_beams=2",
    ]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["objective"] == "seq2seq"
    assert 0 <= s["metrics"]["val/bleu"] <= 100 and s["metrics"]["val/loss"] > 0
    assert s["data"]["corpus"] == path and s["data"]["train_tokens"] > 0
    assert "val/bleu" in (run_dir / "csv/metrics.csv").read_text().splitlines()[0]
    assert "reference:" in (run_dir / "samples.txt").read_text()
    proc = run_train(["model=bert_tiny", "data=pairs", f"data.path={path}", "data.seq_len=32"])
    assert proc.returncode == 2 and "model=t5" in proc.stderr
