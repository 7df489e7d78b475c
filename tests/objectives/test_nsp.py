"""Sentence-pair pretraining (model=bert_nsp): NSP labels and SOP swaps match the stream, token types, cuts at
sentence ends, [CLS]/[SEP] never masked, pairs stay inside the batch's blocks, bad input, and NSP is learned."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lmforge.errors import ConfigError
from lmforge.models.bert import BERT
from lmforge.objectives.losses import IGNORE_INDEX
from lmforge.objectives.nsp import SentencePairBatches, SentencePairLM, sentence_final_table

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "eos": 3, "mask": 4}
FINAL = 7  # in the counting stream, ids divisible by 7 end a sentence


def objective(vocab: int = 1024, pair_head: bool = True, lr: float = 1e-3, nsp: bool = True) -> SentencePairLM:
    dims = {"max_seq_len": 64, "n_layer": 2, "n_head": 2, "d_model": 32, "d_ff": 64, "dropout": 0.0}
    net = BERT(vocab_size=vocab, pair_head=pair_head, **dims)
    return SentencePairLM(net=net, optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0), nsp=nsp)


def counting_builder(seq_len: int = 33, pair_task: str = "nsp") -> SentencePairBatches:
    """A builder whose stream counts up (10, 11, 12, ...): B follows A exactly when B[0] == A[-1] + 1."""
    obj = objective()
    obj.pair_task = pair_task
    builder = obj.batch_builder(seq_len, SPECIAL)
    assert isinstance(builder, SentencePairBatches)
    return replace(builder, sentence_final=torch.arange(4096) % FINAL == 0)


def counting_blocks(n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    starts = np.random.default_rng(seed).permutation(n) * length + 10  # blocks of the stream, shuffled
    return [np.arange(s, s + length) for s in starts]


def segments(batch, i):
    """(A, B, the row's ids with masked positions restored) of example i."""
    labels, x = batch["labels"][i], batch["input_ids"][i]
    truth = torch.where(labels != IGNORE_INDEX, labels, x)
    seps = (truth == SPECIAL["eos"]).nonzero().flatten().tolist()
    assert truth[0] == SPECIAL["cls"] and len(seps) == 2 and seps[1] == len(truth) - 1
    return truth[1 : seps[0]], truth[seps[0] + 1 : -1], truth, seps[0]


def test_nsp_label_says_whether_b_followed_a_in_the_stream():
    builder = counting_builder()
    assert builder.block_len == 30
    blocks = counting_blocks(64, 30)
    batch = builder(blocks, np.random.default_rng(1))
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (64, 33)
    labels = batch["next_sentence_label"]
    assert 16 < int(labels.sum()) < 48  # about half random
    stream = {int(t) for b in blocks for t in b}
    for i in range(64):
        a, b, truth, sep = segments(batch, i)
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) == 30
        assert torch.equal(a, torch.from_numpy(blocks[i][: len(a)]))  # A: the start of the row's own block
        assert int(a[-1]) % FINAL == 0, "A ends at a sentence end (every block of 30 has one)"
        assert torch.all(b[1:] == b[:-1] + 1), "B is a contiguous run of the stream"
        assert {int(t) for t in b} <= stream, "B comes from the blocks of this batch"
        follows = int(b[0]) == int(a[-1]) + 1
        assert follows == (labels[i] == 0), f"row {i}: label {int(labels[i])} but B follows A: {follows}"
        if not follows:  # a random B starts at a sentence start too, where its block has one that leaves room
            src = next(blk for blk in blocks if blk[0] <= int(b[0]) <= blk[-1])
            starts = [c for c in range(1, 30 - len(b) + 1) if src[c - 1] % FINAL == 0]
            assert not starts or int(b[0]) - int(src[0]) in starts
        types = batch["token_type_ids"][i]
        assert (types[: sep + 1] == 0).all() and (types[sep + 1 :] == 1).all()
        chosen = batch["labels"][i] != IGNORE_INDEX
        assert not chosen[[0, sep, -1]].any(), "[CLS]/[SEP] are never masked"
        assert batch["input_ids"][i, 0] == SPECIAL["cls"] and (batch["input_ids"][i, [sep, -1]] == SPECIAL["eos"]).all()


def test_sop_swaps_consecutive_segments_of_one_block():
    builder = counting_builder(pair_task="sop")
    blocks = counting_blocks(64, 30)
    batch = builder(blocks, np.random.default_rng(2))
    labels = batch["next_sentence_label"]
    assert 16 < int(labels.sum()) < 48
    for i in range(64):
        a, b, _, _ = segments(batch, i)
        own = torch.from_numpy(blocks[i])
        if labels[i] == 0:
            assert torch.equal(torch.cat([a, b]), own)
        else:  # swapped: the second segment is the start of the block
            assert torch.equal(torch.cat([b, a]), own)


def test_a_block_without_sentence_ends_is_cut_at_the_random_point_and_a_lone_block_still_pairs():
    builder = replace(counting_builder(), sentence_final=None)
    cuts = set()
    for seed in range(20):
        batch = builder(counting_blocks(1, 30, seed), np.random.default_rng(seed))  # a lone block (val's last batch)
        a, b, _, _ = segments(batch, 0)
        cuts.add(len(a))
        assert (int(b[0]) == int(a[-1]) + 1) == (batch["next_sentence_label"][0] == 0)
    assert len(cuts) > 5  # cut points spread over the block


def test_pairs_come_only_from_the_split_the_blocks_came_from_and_val_is_fixed():
    """The data module hands the builder blocks of one split at a time: every token of a val batch is from val."""
    builder = counting_builder()
    train_blocks = counting_blocks(16, 30)
    val_blocks = [b + 600 for b in counting_blocks(8, 30, seed=3)]  # ids 610.. : disjoint from train
    val = builder.for_split("val")
    batch = val(val_blocks, np.random.default_rng(0))
    truth = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    body = truth[~torch.isin(truth, torch.tensor(list(SPECIAL.values())))]
    assert (body >= 610).all() and not torch.isin(body, torch.from_numpy(np.concatenate(train_blocks))).any()
    again = val(val_blocks, np.random.default_rng(99))  # validation pairs and masks fixed by the contents
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_sentence_ends_are_found_in_a_real_vocabulary():
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = ["The king is here. Is he? He is!\nThe queen speaks, and the lords hear."] * 50
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]"]))
    table = sentence_final_table(tok)
    vocab = tok.get_vocab()
    for t in (".", "?", "!", "Ċ"):
        assert table[vocab[t]], t
    for t in (",", "the", "[CLS]"):
        assert not table[vocab[t]], t


def test_bad_input_is_a_clear_message():
    with pytest.raises(ConfigError, match=r"data.seq_len=4 .* >= 5"):
        objective().batch_builder(4, SPECIAL)
    with pytest.raises(ConfigError, match="model.pair_task='next'.*nsp.*sop"):
        SentencePairLM(net=objective().net, optimizer=torch.optim.AdamW, pair_task="next")
    with pytest.raises(ConfigError, match="pair_head=true"):
        objective(pair_head=False)
    plain = SentencePairLM(net=objective(pair_head=False, nsp=False).net, optimizer=torch.optim.AdamW, nsp=False)
    assert "next_sentence_label" not in plain.batch_builder(4, SPECIAL)([np.arange(10, 12)], None)


def test_nsp_is_learned_when_it_is_learnable():
    """Documents each drawn from one of 8 disjoint vocabularies: a random B (another block, mostly another document)
    gives itself away by its vocabulary. A tiny BERT gets well above chance in a few hundred steps."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    group, n_groups, length = 16, 8, 30

    def block() -> np.ndarray:
        g = rng.integers(n_groups)
        return rng.integers(0, group, length) + 8 + g * group  # ids 8..135

    vocab = 8 + group * n_groups
    obj = objective(vocab=192, lr=3e-3)
    opt = torch.optim.AdamW(obj.net.parameters(), lr=3e-3)
    builder = replace(counting_builder(), sentence_final=None)
    builder = replace(builder, mlm=replace(builder.mlm, replacement_ids=torch.arange(8, vocab)))
    for step in range(250):
        batch = builder([block() for _ in range(32)], np.random.default_rng(step))
        mlm_loss, _, _, _, pair_loss = obj.pair_losses(batch)
        opt.zero_grad()
        (mlm_loss + pair_loss).backward()
        opt.step()
    val = builder.for_split("val")([block() for _ in range(256)], None)
    with torch.no_grad():
        _, logits = obj.net.pretraining_logits(val["input_ids"], val["attention_mask"], val["token_type_ids"])
    acc = (logits.argmax(-1) == val["next_sentence_label"]).float().mean().item()
    # Chance is 50%; a random B from the same vocabulary (1 in 8 of the random ones) cannot be told apart: ~94%.
    print(f"NSP accuracy on held-out pairs: {acc:.3f}")
    assert acc > 0.8, acc


def test_a_checkpoint_can_monitor_the_pair_metrics():
    from omegaconf import OmegaConf

    from lmforge.validate import check_monitors

    target = "lmforge.objectives.nsp.SentencePairLM"
    for metric in ("val/nsp_acc", "val/nsp_loss", "val/acc", "val/loss"):
        check_monitors(OmegaConf.create({"model": {"_target_": target}, "callbacks": {"ckpt": {"monitor": metric}}}))
    with pytest.raises(ConfigError, match="val/nsp_accuracy.*val/nsp_acc"):
        bad = {"model": {"_target_": target}, "callbacks": {"ckpt": {"monitor": "val/nsp_accuracy"}}}
        check_monitors(OmegaConf.create(bad))
