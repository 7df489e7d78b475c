"""Tokenizers from the `tokenizers` library, trained once per corpus and settings, cached.

Kinds: `bpe` (byte-level, GPT-2 style), `wordpiece` (BERT style), `unigram` (T5/SentencePiece
style), `char` (one token per character), or an existing tokenizer.json (`path`).

Special tokens are named by role (eos, pad, mask, ...). Each objective declares the roles it
needs (`objective_cls.special_tokens`); they get the first ids of the vocabulary, in the order
given. The `eos` token separates documents in the token stream, so every objective can find
document boundaries. WordPiece, Unigram and char need an unknown token: the objective's `unk`
role if it has one, else one is added ([UNK] / <unk>).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.data.locking import build_once
from lmforge.errors import ConfigError, DataError

KINDS = ("bpe", "wordpiece", "unigram", "char")
FILE_KIND = "file"  # conf/tokenizer/pretrained.yaml: a tokenizer.json given by `path`
BYTE_ALPHABET = 256


def _specials_with_unk(specials: dict[str, str], default_unk: str) -> tuple[list[str], str]:
    unk = specials.get("unk", default_unk)
    tokens = list(dict.fromkeys(specials.values()))
    return (tokens if unk in tokens else [*tokens, unk]), unk


def _bpe(spec: TokenizerSpec, specials: dict[str, str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(dict.fromkeys(specials.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _wordpiece(spec: TokenizerSpec, specials: dict[str, str]):
    tokens, unk = _specials_with_unk(specials, "[UNK]")
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=spec.lowercase, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    if "cls" in specials and "sep" in specials:  # BERT's [CLS] A [SEP] (B [SEP]) when special tokens are added
        cls, sep = specials["cls"], specials["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tokens.index(cls)), (sep, tokens.index(sep))],
        )
    trainer = trainers.WordPieceTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=tokens,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return tok, trainer


def _unigram(spec: TokenizerSpec, specials: dict[str, str]):
    # As T5's SentencePiece: NFKC, spaces become "▁" and start each word; sentinels are plain specials.
    tokens, unk = _specials_with_unk(specials, "<unk>")
    tok = Tokenizer(models.Unigram())
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if spec.lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=spec.vocab_size, special_tokens=tokens, unk_token=unk, show_progress=False
    )
    return tok, trainer


def _char(spec: TokenizerSpec, specials: dict[str, str]):
    # Every character is a token: a WordLevel model over single characters.
    tokens, unk = _specials_with_unk(specials, "<unk>")
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    if spec.lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(
        vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, special_tokens=tokens, show_progress=False
    )
    return tok, trainer


_BUILDERS = {"bpe": _bpe, "wordpiece": _wordpiece, "unigram": _unigram, "char": _char}


class TokenizerSpec:
    """What tokenizer to use: trained (`kind`, `vocab_size`, ...) or loaded from `path` (a tokenizer.json).

    `max_train_chars` bounds the text the tokenizer is trained on (an evenly spread sample of the
    corpus); it keeps training time and memory in check on large corpora. None: all of it.
    """

    def __init__(
        self,
        kind: str = "bpe",
        vocab_size: int = 4096,
        min_frequency: int = 2,
        path: str | None = None,
        lowercase: bool = False,
        max_train_chars: int | None = None,
    ):
        if path is None and kind not in KINDS:
            raise ConfigError(
                f"tokenizer.kind={kind!r} is not known; choose one of {', '.join(KINDS)}, "
                "or use tokenizer=pretrained tokenizer.path=<tokenizer.json>."
            )
        if path is None and (not isinstance(vocab_size, int) or vocab_size < 2):
            raise ConfigError(f"tokenizer.vocab_size={vocab_size} must be an integer of at least 2.")
        if max_train_chars is not None and max_train_chars < 1:
            raise ConfigError(f"tokenizer.max_train_chars={max_train_chars} must be positive, or null for all text.")
        self.kind = FILE_KIND if path is not None else kind
        self.vocab_size, self.min_frequency, self.path = vocab_size, min_frequency, path
        self.lowercase, self.max_train_chars = lowercase, max_train_chars

    def check(self, specials: dict[str, str]) -> None:
        """Settings that cannot work, found before any training."""
        n_special = len(set(specials.values()))
        if self.kind == "bpe" and self.vocab_size < BYTE_ALPHABET + n_special:
            raise ConfigError(
                f"tokenizer.vocab_size={self.vocab_size} is below the {BYTE_ALPHABET} byte tokens plus "
                f"{n_special} special tokens a byte-level BPE needs; use at least {BYTE_ALPHABET + n_special}."
            )
        if self.kind in ("wordpiece", "unigram", "char") and self.vocab_size <= n_special + 1:
            raise ConfigError(
                f"tokenizer.vocab_size={self.vocab_size} leaves no room beside the {n_special} special "
                "tokens; raise it."
            )

    def cache_key(self, corpus_fingerprint: str, specials: dict[str, str]) -> str:
        settings = (
            [self.kind, self.vocab_size, self.min_frequency, self.lowercase, self.max_train_chars, corpus_fingerprint]
            if self.path is None
            else [FILE_KIND, _file_hash(Path(self.path).expanduser())]
        )
        blob = json.dumps([*settings, list(specials.items())])
        return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()

    def load_or_train(
        self,
        texts: Iterable[str] | Callable[[], Iterable[str]],
        specials: dict[str, str],
        corpus_fingerprint: str,
        cache_dir: Path,
    ) -> tuple[Tokenizer, Path]:
        """The tokenizer and the path of its cached tokenizer.json (built once, under a lock).

        `texts` (or a function returning them) is only read when the tokenizer must be trained.
        """
        self.check(specials)
        entry = Path(cache_dir) / "tokenizers" / f"{self.kind}-{self.cache_key(corpus_fingerprint, specials)}"

        def build(tmp: Path) -> None:
            tok = (
                self._from_file(self.path, specials)
                if self.path
                else self._train(texts() if callable(texts) else texts, specials)
            )
            tok.save(str(tmp / "tokenizer.json"))

        build_once(entry, build)
        return Tokenizer.from_file(str(entry / "tokenizer.json")), entry / "tokenizer.json"

    def _train(self, texts: Iterable[str], specials: dict[str, str]) -> Tokenizer:
        tok, trainer = _BUILDERS[self.kind](self, specials)
        tok.train_from_iterator(texts, trainer)
        return tok

    def _from_file(self, path: str, specials: dict[str, str]) -> Tokenizer:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(
                f"tokenizer.path={path!r}: no such file. Point it at a tokenizer.json "
                "saved by the `tokenizers` library, or choose a tokenizer to train (tokenizer=bpe)."
            )
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # the library raises a bare Exception for malformed files
            raise DataError(
                f"tokenizer.path={path!r}: not a tokenizer.json the `tokenizers` library can read ({e})."
            ) from None
        missing = [t for t in dict.fromkeys(specials.values()) if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens(missing)  # the objective's roles must exist; new ids go at the end
        return tok


def sample_texts(documents: Iterable, max_chars: int | None, size_hint: int | None = None) -> Iterator[str]:
    """The text to train a tokenizer on: all of it, or about `max_chars` spread evenly over the corpus.

    Every k-th document is taken (k from the corpus size) until `max_chars` are reached, so a
    corpus sorted by topic or source still trains a tokenizer that has seen all of it.
    """
    stride = max(1, -(-size_hint // max_chars)) if max_chars and size_hint else 1
    taken = 0
    for i, doc in enumerate(documents):
        if i % stride:
            continue
        for chunk in doc.chunks:
            yield chunk
            taken += len(chunk)
        if max_chars and taken >= max_chars:
            return


def special_token_ids(tok: Tokenizer, specials: dict[str, str]) -> dict[str, int]:
    ids = {role: tok.token_to_id(token) for role, token in specials.items()}
    missing = [f"{role}={specials[role]!r}" for role, i in ids.items() if i is None]
    if missing:
        raise DataError(f"the tokenizer has no id for the special tokens {', '.join(missing)}.")
    return {role: i for role, i in ids.items() if i is not None}  # all of them, now known


def copy_tokenizer(src: Path, run_dir: Path) -> Path:
    dst = Path(run_dir) / "tokenizer.json"
    shutil.copyfile(src, dst)
    return dst


def _file_hash(p: Path) -> str:
    return hashlib.blake2b(p.read_bytes(), digest_size=10).hexdigest() if p.is_file() else "missing"
