"""A generated instruction task that runs offline (`data=reverse_words`, `experiment=reverse_words`): the prompt is a
few words drawn from a fixed list of Shakespearean words, the response is the same words in reverse order.

What it measures: whether SFT's plumbing works end to end (templates, response-only loss, eos to stop, greedy
decoding) and whether a small decoder learns to copy tokens from its prompt in a fixed rearrangement. It measures no
language ability: the words carry no meaning here, and the task is learnable from the prompt alone.
"""

from __future__ import annotations

import hashlib
import json
import random

from lmforge.errors import ConfigError

# 64 words of the plays, each one BPE token once the tokenizer has seen the task (a byte-level BPE keeps a word
# whole when it is frequent): the task is then about order, not spelling.
WORDS = (
    "king queen lord lady sword crown night day love death heart blood fair sweet noble speak hear know come go "
    "see thou thee thy mine grace honour father mother brother sister son daughter friend enemy war peace fortune "
    "heaven earth sea fire storm moon sun star rose ghost witch fool knave prince duke soldier letter ring poison "
    "dagger throne castle forest dream sleep tears"
).split()


class ReverseWords:
    """`n_examples` prompts of `min_words`..`max_words` words (of the first `vocabulary` of WORDS), seeded; the
    response reverses them. A source of data.instructions (name, fingerprint, read)."""

    def __init__(
        self,
        n_examples: int = 4000,
        min_words: int = 2,
        max_words: int = 5,
        vocabulary: int = len(WORDS),
        seed: int = 0,
    ):
        if not 1 <= min_words <= max_words or not 1 <= vocabulary <= len(WORDS) or n_examples < 2:
            raise ConfigError(
                f"data.source: min_words={min_words}, max_words={max_words}, vocabulary={vocabulary}, "
                f"n_examples={n_examples} must satisfy 1 <= min_words <= max_words, 1 <= vocabulary <= {len(WORDS)}, "
                "n_examples >= 2."
            )
        self.n_examples, self.min_words, self.max_words, self.seed = n_examples, min_words, max_words, seed
        self.words = WORDS[:vocabulary]
        self.name = f"reverse_words({n_examples} examples, {min_words}-{max_words} of {vocabulary} words, seed {seed})"

    def fingerprint(self) -> str:
        blob = json.dumps(["reverse_words-v1", self.words, self.n_examples, self.min_words, self.max_words, self.seed])
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    def read(self) -> list[list[tuple[str, str]]]:
        rng = random.Random(self.seed)
        examples = []
        for _ in range(self.n_examples):
            words = [rng.choice(self.words) for _ in range(rng.randint(self.min_words, self.max_words))]
            prompt = "Reverse the words: " + " ".join(words)
            examples.append([("user", prompt), ("assistant", " ".join(reversed(words)))])
        return examples
