"""Each tokenizer kind trains, round-trips text, gives the objective's special tokens the first ids,
and tokenizes long documents piece by piece exactly as a whole."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer

from lmforge.data.corpus import rechunk
from lmforge.data.tokenizer import TokenizerSpec, sample_texts, special_token_ids
from lmforge.errors import ConfigError, DataError

BERT = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "eos": "[SEP]"}
T5 = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>", **{f"sentinel_{i}": f"<extra_id_{i}>" for i in range(100)}}
GPT = {"eos": "<|endoftext|>"}


@pytest.fixture(scope="module")
def text():
    rng = random.Random(0)
    words = ("The king's queen spoke, and lords answered: 'Sweet night!' Love, death; blood 1599 naïve café").split(" ")
    seps = [" ", " ", " ", "\n", "  ", "\n\n", ". "]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(6000))


def train(kind, specials, text, tmp_path, vocab=600, **kw):
    return TokenizerSpec(kind, vocab, 1, **kw).load_or_train([text], specials, "corpus-fp", tmp_path)[0]


@pytest.mark.parametrize("kind,specials", [("bpe", GPT), ("wordpiece", BERT), ("unigram", T5), ("char", GPT)])
def test_specials_take_the_first_ids_and_text_round_trips(kind, specials, text, tmp_path):
    tok = train(kind, specials, text, tmp_path)
    ids = special_token_ids(tok, specials)
    distinct = list(dict.fromkeys(specials.values()))
    assert [ids[r] for r in specials] == [distinct.index(t) for t in specials.values()]
    sample = "The king's queen spoke, and lords answered"
    decoded = tok.decode(tok.encode(sample, add_special_tokens=False).ids)
    if kind == "wordpiece":  # BERT's pre-tokenizer splits off punctuation; the decoder rejoins with spaces
        assert decoded.replace(" ' ", "'").replace(" ,", ",") == sample
    else:
        assert decoded == sample
    # specials are atomic: written in text, they come out as their own id
    assert tok.encode(f"love {specials['eos']} death", add_special_tokens=False).ids.count(ids["eos"]) == 1


def test_wordpiece_suits_bert(text, tmp_path):
    tok = train("wordpiece", BERT, text, tmp_path)
    enc = tok.encode("sweet night")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"  # post-processor for HF-style use
    unk = tok.token_to_id("[UNK]")
    assert tok.encode("ʘ", add_special_tokens=False).ids == [unk]
    assert any(t.startswith("##") for t in tok.get_vocab())
    lower = train("wordpiece", BERT, text, tmp_path / "lower", lowercase=True)
    assert (
        lower.encode("KING", add_special_tokens=False).tokens == lower.encode("king", add_special_tokens=False).tokens
    )


def test_unigram_suits_t5(text, tmp_path):
    tok = train("unigram", T5, text, tmp_path)
    for i in (0, 17, 99):
        assert tok.token_to_id(f"<extra_id_{i}>") == 3 + i
    enc = tok.encode("love<extra_id_0> death<extra_id_1>", add_special_tokens=False)
    assert "<extra_id_0>" in enc.tokens and "<extra_id_1>" in enc.tokens
    assert tok.encode("ʘ", add_special_tokens=False).ids[-1] == tok.token_to_id("<unk>")
    assert tok.encode("king", add_special_tokens=False).tokens[0].startswith("▁")


def test_char_is_one_token_per_character_and_has_its_own_unk(text, tmp_path):
    tok = train("char", GPT, text, tmp_path, vocab=1024)
    assert tok.encode("love", add_special_tokens=False).tokens == ["l", "o", "v", "e"]
    unk = tok.token_to_id("<unk>")
    assert unk is not None and unk != tok.token_to_id(GPT["eos"])  # unknown characters are not document ends
    assert tok.encode("ʘ", add_special_tokens=False).ids == [unk]


@pytest.mark.parametrize("kind,specials", [("bpe", GPT), ("wordpiece", BERT), ("unigram", T5), ("char", GPT)])
def test_long_documents_tokenize_piece_by_piece_as_a_whole(kind, specials, text, tmp_path):
    tok = train(kind, specials, text, tmp_path)
    pieces = list(rechunk([text], 2000))
    assert len(pieces) > 10 and "".join(pieces) == text
    by_piece = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    assert by_piece == tok.encode(text, add_special_tokens=False).ids


def test_pretrained_tokenizer_json_is_used_and_gets_missing_specials(text, tmp_path):
    gpt = train("bpe", GPT, text, tmp_path / "a")
    path = tmp_path / "mine.json"
    gpt.save(str(path))
    spec = TokenizerSpec(kind="file", path=str(path))
    tok, cached = spec.load_or_train(lambda: pytest.fail("a given tokenizer is never trained"), BERT, "x", tmp_path)
    assert tok.encode("sweet night", add_special_tokens=False).ids == gpt.encode("sweet night").ids
    assert tok.get_vocab_size() == gpt.get_vocab_size() + 5  # [PAD] [UNK] [CLS] [SEP] [MASK] appended
    assert Tokenizer.from_file(str(cached)).token_to_id("[MASK]") is not None


def test_trained_once_then_cached_and_keyed_by_settings(text, tmp_path):
    calls = []

    def texts():
        calls.append(1)
        return [text]

    a = TokenizerSpec("bpe", 400, 1).load_or_train(texts, GPT, "fp", tmp_path)[1]
    b = TokenizerSpec("bpe", 400, 1).load_or_train(texts, GPT, "fp", tmp_path)[1]
    assert a == b and len(calls) == 1
    assert TokenizerSpec("bpe", 500, 1).load_or_train(texts, GPT, "fp", tmp_path)[1] != a
    assert TokenizerSpec("bpe", 400, 1).load_or_train(texts, GPT, "other-corpus", tmp_path)[1] != a
    assert TokenizerSpec("bpe", 400, 1).load_or_train(texts, BERT, "fp", tmp_path)[1] != a
    assert len(calls) == 4


def test_bad_tokenizer_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.kind='sentencepiece'"):
        TokenizerSpec("sentencepiece")
    with pytest.raises(ConfigError, match="tokenizer.vocab_size=100"):
        TokenizerSpec("bpe", 100).check(GPT)
    with pytest.raises(DataError, match="no such file"):
        TokenizerSpec(kind="file", path=str(tmp_path / "nope.json")).load_or_train([], GPT, "x", tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        TokenizerSpec(kind="file", path=str(tmp_path / "broken.json")).load_or_train([], GPT, "x", tmp_path)
    assert not list((tmp_path / "tokenizers").glob("file-*"))  # nothing half-built is left


def test_training_sample_is_spread_over_the_corpus():
    class Doc:
        def __init__(self, i):
            self.id, self.chunks = str(i), [f"doc{i} " * 10]

    docs = [Doc(i) for i in range(100)]
    size = sum(len(d.chunks[0]) for d in docs)
    taken = "".join(sample_texts(iter(docs), max_chars=size // 10, size_hint=size))
    assert "doc0 " in taken and "doc90 " in taken and "doc5 " not in taken  # every 10th document
    assert "".join(sample_texts(iter(docs), None)) == "".join(d.chunks[0] for d in docs)
