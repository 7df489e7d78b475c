"""SFT (objectives/sft.py): labels only on responses, a token-weighted loss, eos-stopping decoding, and learning."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fit_then_validate

from lmforge import generation
from lmforge.data.instructions import InstructionExample, InstructionsDataModule
from lmforge.data.reverse_words import ReverseWords
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.objectives.losses import IGNORE_INDEX
from lmforge.objectives.schedules import warmup_cosine
from lmforge.objectives.sft import InstructionCollator, SupervisedFineTuning

PAD = 0


def example(prompt: list[int], response: list[int]) -> InstructionExample:
    ids = np.array(prompt + response, dtype=np.int64)
    trained = np.array([False] * len(prompt) + [True] * len(response))
    return InstructionExample(ids, trained, len(prompt))


def tiny_sft(vocab: int = 32, lr: float = 3e-3, family: str = "gpt", **kw) -> SupervisedFineTuning:
    torch.manual_seed(0)
    cls = {"gpt": GPT, "llama": Llama}[family]
    net = cls(vocab_size=vocab, max_seq_len=64, n_layer=2, n_head=2, d_model=64)
    return SupervisedFineTuning(
        net,
        functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        functools.partial(warmup_cosine, warmup_steps=10, min_lr_ratio=0.1),
        **kw,
    )


def test_prompt_and_padding_labels_are_ignored_and_responses_keep_their_ids():
    batch = InstructionCollator(pad_id=PAD, block_len=5)([example([5, 6, 7], [8, 9, 2]), example([5], [4, 2])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 2], [5, 4, 2, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8, 9, 2],
        [IGNORE_INDEX, 4, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["response_start"].tolist() == [3, 1]
    assert batch["num_tokens"] == 9  # real tokens, not the 12 of the padded batch


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_prompt_tokens_never_contribute_and_the_loss_is_token_weighted(family):
    model = tiny_sft(family=family)
    a, b = example([3, 4, 5, 6], [7, 8, 9, 10, 11, 2]), example([3], [12, 2])
    batch = InstructionCollator(PAD, 5)([a, b])
    loss, n = model.loss(batch)
    assert int(n) == 8  # 6 + 2 response tokens
    with torch.no_grad():
        logits = model.net(batch["input_ids"]).float()
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), reduction="none"
    ).view(2, -1)
    trained = batch["labels"][:, 1:] != IGNORE_INDEX
    token_mean = per_token[trained].sum() / trained.sum()
    example_means = torch.stack([per_token[i][trained[i]].mean() for i in range(2)]).mean()
    assert torch.allclose(loss, token_mean, atol=1e-5)
    assert not torch.allclose(loss, example_means, atol=1e-3)  # the mean of per-example means is another number
    # prompt positions carry no target: giving one to the first prompt position changes the loss, so the
    # ignored labels are what keeps the prompt out
    with_prompt = {**batch, "labels": batch["labels"].clone()}
    with_prompt["labels"][0, 1] = batch["input_ids"][0, 1]
    assert int(model.loss(with_prompt)[1]) == 9 and not torch.allclose(model.loss(with_prompt)[0], loss)


def test_decoding_stops_once_every_row_has_its_stop_token_and_streams_each_column():
    torch.manual_seed(0)
    net = GPT(vocab_size=16, max_seq_len=64, n_layer=1, n_head=2, d_model=16)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generation.sample(net, prompt, 20, temperature=0.0)
    first = free[:, 3:].tolist()
    stop = first[0][2]  # a token row 0 produces at its third step
    columns: list[list[int]] = []
    out = generation.sample(
        net, prompt, 20, temperature=0.0, stop_ids=[stop], on_token=lambda c: columns.append(c[:, 0].tolist())
    )
    assert torch.equal(out, free[:, : out.size(1)])  # the same tokens, cut short
    ends = [row.index(stop) + 1 if stop in row else 20 for row in first]
    assert out.size(1) - 3 == max(ends)  # stopped when the last row reached the stop token
    assert [list(c) for c in zip(*columns)] == out[:, 3:].tolist()


def reverse_words_data(tmp_path, n: int, batch_size: int) -> InstructionsDataModule:
    dm = InstructionsDataModule(
        TokenizerSpec("bpe", 320, min_frequency=1),
        str(tmp_path / "cache"),
        source=ReverseWords(n_examples=n, min_words=2, max_words=2, vocabulary=6, seed=0),
        seq_len=48,
        batch_size=batch_size,
        val_fraction=0.1,
    )
    dm.build(SupervisedFineTuning.special_tokens)
    return dm


def test_a_tiny_model_learns_to_reverse_two_words_to_exact_match(tmp_path):
    dm = reverse_words_data(tmp_path, 600, 32)
    model = tiny_sft(vocab=dm.vocab_size, lr=3e-3, exact_match_samples=32)
    dm.set_batch_builder(model.batch_builder(48, dm.special_ids))
    trainer = fit_then_validate(model, dm.train_dataloader(), dm.val_dataloader(), steps=300, root=tmp_path)
    m = trainer.callback_metrics
    assert float(m["val/exact_match"]) >= 0.95, (float(m["val/exact_match"]), float(m["val/loss"]))
    assert float(m["val/loss"]) < 0.1
