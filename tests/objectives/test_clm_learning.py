"""The causal-LM objective learns: on a Markov source of known entropy the loss approaches the floor."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import fit_then_validate
from torch.utils.data import DataLoader

from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.objectives.clm import CausalLM, PackedCausalBatches
from lmforge.objectives.schedules import warmup_cosine

VOCAB, FANOUT = 16, 4  # each token is followed by one of 4 tokens, uniformly: floor = ln 4 nats


def markov_stream(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    successors = np.stack([rng.permutation(VOCAB)[:FANOUT] for _ in range(VOCAB)])
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    choices = rng.integers(0, FANOUT, n)
    for i in range(1, n):
        out[i] = successors[out[i - 1], choices[i]]
    return out


NETS = {
    "gpt": lambda seq: GPT(vocab_size=VOCAB, max_seq_len=seq, n_layer=1, n_head=2, d_model=32),
    # RoPE, RMSNorm, SwiGLU and multi-query attention (2 query heads over 1 kv head)
    "llama": lambda seq: Llama(vocab_size=VOCAB, max_seq_len=seq, n_layer=1, n_head=2, n_kv_head=1, d_model=32),
}


@pytest.mark.parametrize("family", list(NETS))
def test_loss_falls_to_the_entropy_floor(tmp_path, family):
    floor = math.log(FANOUT)
    seq = 32
    blocks = list(markov_stream(seq * 2048, seed=0).reshape(-1, seq))
    val_blocks = list(markov_stream(seq * 64, seed=0).reshape(-1, seq))  # same chain, another sample
    collate = PackedCausalBatches(seq)
    train = DataLoader(blocks, batch_size=32, shuffle=True, collate_fn=collate)
    val = DataLoader(val_blocks, batch_size=64, collate_fn=collate)
    torch.manual_seed(0)
    net = NETS[family](seq)
    model = CausalLM(
        net=net,
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0),
        scheduler=functools.partial(warmup_cosine, warmup_steps=10),
    )
    trainer = fit_then_validate(model, train, val, steps=250, root=tmp_path)
    start = math.log(VOCAB)
    val_loss = float(trainer.callback_metrics["val/loss"])
    assert val_loss < floor + 0.08, f"val/loss {val_loss:.3f} should approach the floor {floor:.3f}"
    assert val_loss > floor - 0.05, f"val/loss {val_loss:.3f} below the entropy floor {floor:.3f} is impossible"
    assert start - val_loss > 1.0
