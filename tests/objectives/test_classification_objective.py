"""The classification objective: example layout (special tokens, token types, truncation), class weights, metrics,
and learning a separable task."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models.heads import BERTClassifier, GPTClassifier
from lmforge.objectives.classification import ClassificationBatches, DecoderClassification, EncoderClassification

PAD, CLS, SEP = 0, 1, 2


@dataclass
class Ex:
    a: np.ndarray
    b: np.ndarray | None
    label: int


def ex(a, b=None, label=0):
    return Ex(np.array(a), None if b is None else np.array(b), label)


def test_encoder_layout_has_token_types_zero_on_a_and_one_on_b():
    batch = ClassificationBatches(PAD, SEP, CLS, max_len=16)([ex([10, 11, 12], [20, 21], 1), ex([13], [22], 0)])
    assert batch["input_ids"][0].tolist() == [CLS, 10, 11, 12, SEP, 20, 21, SEP]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert batch["input_ids"][1].tolist() == [CLS, 13, SEP, 22, SEP, PAD, PAD, PAD]
    assert batch["token_type_ids"][1].tolist()[:5] == [0, 0, 0, 1, 1]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch["labels"].tolist() == [1, 0]


def test_decoder_layout_is_a_eos_b_eos_without_token_types():
    eos = 7
    batch = ClassificationBatches(PAD, eos, None, max_len=16)([ex([10, 11], [20]), ex([12])])
    assert batch["input_ids"].tolist() == [[10, 11, eos, 20, eos], [12, eos, PAD, PAD, PAD]]
    assert "token_type_ids" not in batch


def test_pairs_are_cut_longest_first_to_fit():
    batch = ClassificationBatches(PAD, SEP, CLS, max_len=9)([ex(list(range(10, 20)), [30, 31])])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 9 and ids == [CLS, 10, 11, 12, 13, SEP, 30, 31, SEP]


def objective(net, **kw):
    opt = functools.partial(torch.optim.AdamW, lr=3e-3)
    return EncoderClassification(net, opt, None, **kw)


def small_bert(num_labels=2):
    return BERTClassifier(
        num_labels=num_labels, vocab_size=40, max_seq_len=24, n_layer=1, n_head=2, d_model=32, d_ff=64, dropout=0.0
    )


def test_balanced_class_weights_and_bad_weights():
    model = objective(small_bert(), class_weights="balanced")
    model.bind_labels(["a", "b"], [30, 10])
    torch.testing.assert_close(model.class_weights, torch.tensor([40 / 60, 40 / 20]))
    with pytest.raises(ConfigError, match="give 2 non-negative numbers"):
        objective(small_bert(), class_weights=[1.0]).bind_labels(["a", "b"], [1, 1])
    with pytest.raises(ConfigError, match="balanced"):
        objective(small_bert(), class_weights="even")


def separable(n: int, seed: int) -> list[Ex]:
    """Label 1 iff the text holds token 5 (somewhere among random filler 10..39): separable, position-free."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        toks = [rng.randint(10, 39) for _ in range(rng.randint(3, 12))]
        toks.insert(rng.randint(0, len(toks)), 5 if label else 6)
        out.append(ex(toks, label=label))
    return out


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_a_tiny_classifier_learns_a_separable_task(family):
    torch.manual_seed(0)
    if family == "bert":
        model, builder = objective(small_bert()), ClassificationBatches(PAD, SEP, CLS, 24)
    else:
        net = GPTClassifier(num_labels=2, vocab_size=40, max_seq_len=24, n_layer=1, n_head=2, d_model=32)
        opt = functools.partial(torch.optim.AdamW, lr=3e-3)
        model, builder = DecoderClassification(net, opt, None), ClassificationBatches(PAD, SEP, None, 24)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train, val = separable(2048, 0), separable(256, 1)
    model.train()
    for i in range(0, 2 * len(train), 32):  # two epochs
        loss, n = model.loss(builder((train + train)[i : i + 32]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for i in range(0, len(val), 64):
            model.validation_step(builder(val[i : i + 64]), i)
    acc, f1 = model.val_acc.compute().item(), model.val_f1.compute().item()
    assert acc >= 0.95 and f1 >= 0.95, (acc, f1)  # chance is 0.5
