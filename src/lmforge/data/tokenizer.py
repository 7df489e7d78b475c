"""Tokenizers from the `tokenizers` library, trained once per corpus and settings, cached.

Special tokens are named by role (eos, pad, mask, ...). Each objective declares the roles it
needs; they get the first ids of the vocabulary. The `eos` token separates documents in the
token stream, so every objective can find document boundaries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.data.locking import build_once
from lmforge.errors import ConfigError, DataError

KINDS = ("bpe", "char")


def _bpe(vocab_size: int, min_frequency: int, specials: list[str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    return tok, trainer


def _char(vocab_size: int, min_frequency: int, specials: list[str]):
    # Every character is a token: a WordLevel model over single characters.
    tok = Tokenizer(models.WordLevel(unk_token=specials[0] if specials else None))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=specials, show_progress=False)
    return tok, trainer


_BUILDERS = {"bpe": _bpe, "char": _char}


class TokenizerSpec:
    """What tokenizer to use: trained (`kind`, `vocab_size`) or loaded from `path` (a tokenizer.json)."""

    def __init__(self, kind: str = "bpe", vocab_size: int = 4096, min_frequency: int = 2, path: str | None = None):
        if path is None and kind not in KINDS:
            raise ConfigError(f"tokenizer.kind={kind!r} is not known; choose one of {', '.join(KINDS)}, "
                              "or set tokenizer.path to an existing tokenizer.json.")
        if vocab_size < 2:
            raise ConfigError(f"tokenizer.vocab_size={vocab_size} must be at least 2.")
        self.kind, self.vocab_size, self.min_frequency, self.path = kind, vocab_size, min_frequency, path

    def cache_key(self, corpus_fingerprint: str, specials: dict[str, str]) -> str:
        blob = json.dumps([self.kind, self.vocab_size, self.min_frequency, self.path and _file_hash(Path(self.path)),
                           corpus_fingerprint, sorted(specials.items())])
        return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()

    def load_or_train(self, texts: Iterable[str], specials: dict[str, str], corpus_fingerprint: str,
                      cache_dir: Path) -> tuple[Tokenizer, Path]:
        """The tokenizer and the path of its cached tokenizer.json (built once, under a lock)."""
        entry = Path(cache_dir) / "tokenizers" / f"{self.kind if self.path is None else 'file'}-{self.cache_key(corpus_fingerprint, specials)}"

        def build(tmp: Path) -> None:
            tok = self._from_file(specials) if self.path else self._train(texts, specials)
            tok.save(str(tmp / "tokenizer.json"))

        build_once(entry, build)
        return Tokenizer.from_file(str(entry / "tokenizer.json")), entry / "tokenizer.json"

    def _train(self, texts: Iterable[str], specials: dict[str, str]) -> Tokenizer:
        tok, trainer = _BUILDERS[self.kind](self.vocab_size, self.min_frequency, list(dict.fromkeys(specials.values())))
        tok.train_from_iterator(texts, trainer)
        return tok

    def _from_file(self, specials: dict[str, str]) -> Tokenizer:
        p = Path(self.path).expanduser()
        if not p.is_file():
            raise DataError(f"tokenizer.path={self.path!r}: no such file. Point it at a tokenizer.json "
                            "saved by the `tokenizers` library, or unset it to train one.")
        tok = Tokenizer.from_file(str(p))
        missing = [t for t in specials.values() if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens(missing)  # the objective's roles must exist; new ids go at the end
        return tok


def special_token_ids(tok: Tokenizer, specials: dict[str, str]) -> dict[str, int]:
    return {role: tok.token_to_id(token) for role, token in specials.items()}


def copy_tokenizer(src: Path, run_dir: Path) -> Path:
    dst = Path(run_dir) / "tokenizer.json"
    shutil.copyfile(src, dst)
    return dst


def _file_hash(p: Path) -> str:
    return hashlib.blake2b(p.read_bytes(), digest_size=10).hexdigest() if p.is_file() else "missing"
