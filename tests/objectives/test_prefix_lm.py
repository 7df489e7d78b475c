"""Prefix LM (model=gpt_prefix, model=llama_prefix): bidirectional over the prefix, causal after it, loss on the
suffix only, prefix-aware generation with a correct KV cache, and a learning test."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import fit_then_validate
from test_clm_learning import FANOUT, VOCAB, markov_stream
from torch.utils.data import DataLoader

from lmforge import generation
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.models.masks import decoder_inputs, decoder_mask
from lmforge.objectives.losses import IGNORE_INDEX, token_cross_entropy
from lmforge.objectives.prefix_lm import PrefixBatches, PrefixLM, prefix_bounds
from lmforge.objectives.schedules import warmup_cosine

V, EOS, T = 61, 0, 32


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():  # off the init (unit norms, zero biases), so every weight matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


NETS = {
    "gpt": lambda: perturbed(GPT(vocab_size=V, max_seq_len=48, n_layer=2, n_head=4, d_model=32)),
    **{
        f"llama-{p}": (
            lambda p=p: perturbed(
                Llama(vocab_size=V, max_seq_len=48, n_layer=2, n_head=4, n_kv_head=2, d_model=32, position=p)
            )
        )
        for p in ("rope", "alibi", "learned", "sinusoidal")
    },
}


def rows(n: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(1, V, (n, T)))


def prefix_logits(net, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    return net(ids, attn_mask=decoder_mask(ids.size(1), ids.device, prefix_len=torch.full((ids.size(0),), prefix)))


@pytest.mark.parametrize("name", list(NETS))
def test_a_suffix_token_never_changes_the_prefix_or_earlier_suffix_logits(name):
    net, prefix = NETS[name](), 12
    ids = torch.from_numpy(np.stack(rows(2))).long()
    base = prefix_logits(net, ids, prefix)
    for at in (prefix, prefix + 5, T - 1):
        changed = ids.clone()
        changed[:, at] = (changed[:, at] + 3) % V
        out = prefix_logits(net, changed, prefix)
        assert torch.allclose(out[:, :at], base[:, :at], atol=1e-6), f"a suffix token at {at} changed earlier logits"
        assert not torch.allclose(out[:, at:], base[:, at:], atol=1e-4)


@pytest.mark.parametrize("name", list(NETS))
def test_a_prefix_token_changes_the_logits_at_every_prefix_position(name):
    net, prefix = NETS[name](), 12
    ids = torch.from_numpy(np.stack(rows(2))).long()
    base = prefix_logits(net, ids, prefix)
    for at in (0, 6, prefix - 1):
        changed = ids.clone()
        changed[:, at] = (changed[:, at] + 3) % V
        diff = (prefix_logits(net, changed, prefix) - base).abs().amax(dim=-1)  # (batch, time)
        assert (diff[:, :prefix] > 1e-4).all(), f"a prefix token at {at}: some prefix position did not see it"
        assert (diff[:, prefix:] > 1e-4).all(), "every suffix position sees the whole prefix"


def test_split_points_are_drawn_per_example_within_the_bounds_and_seeded():
    builder = PrefixBatches(T, EOS, prefix_min=0.25, prefix_max=0.75)
    assert builder.bounds == (8, 24)
    batch = builder(rows(64), np.random.default_rng(5))
    lengths = batch["prefix_len"]
    assert lengths.min() >= 8 and lengths.max() <= 24 and len(set(lengths.tolist())) > 5
    assert torch.equal(builder(rows(64), np.random.default_rng(5))["prefix_len"], lengths)
    assert not torch.equal(builder(rows(64), np.random.default_rng(6))["prefix_len"], lengths)
    steps = torch.arange(T)[None]
    ignored = batch["labels"] == IGNORE_INDEX
    assert torch.equal(ignored, steps < lengths[:, None])  # prefix targets ignored, every suffix target kept


@torch.no_grad()
def test_the_loss_is_the_suffix_next_token_loss_and_ignores_prefix_targets():
    net = NETS["llama-rope"]()
    lm = PrefixLM(net=net, optimizer=None)
    batch = PrefixBatches(T, EOS)(rows(4), np.random.default_rng(1))
    loss, n = lm.loss(batch)
    logits = net(batch["input_ids"], **decoder_inputs(batch))
    per_row = [
        token_cross_entropy(logits[i, p - 1 : T - 1], batch["input_ids"][i, p:])
        for i, p in enumerate(batch["prefix_len"].tolist())
    ]
    assert int(n) == sum(int(c) for _, c in per_row) == (T - batch["prefix_len"]).sum()
    assert float(loss) == pytest.approx(sum(float(lo) * int(c) for lo, c in per_row) / int(n), rel=1e-5)


def test_prefix_and_document_masks_combine():
    net = NETS["gpt"]()
    ids = rows(1)[0]
    ids[[9, 20]] = EOS
    builder = PrefixBatches(T, EOS, prefix_min=0.5, prefix_max=0.5).with_document_mask()
    batch = builder([ids], np.random.default_rng(0))
    assert batch["prefix_len"].item() == 16 and "document_ids" in batch
    base = net(batch["input_ids"], **decoder_inputs(batch))
    changed = ids.copy()
    changed[12] = (changed[12] + 1) % V or 1  # document 1 (10..20), inside the prefix
    out = net(torch.from_numpy(changed).long()[None], **decoder_inputs(builder([changed], np.random.default_rng(0))))
    others = [*range(10), *range(21, T)]
    assert torch.equal(out[0, others], base[0, others])
    assert not torch.allclose(out[0, 10:12], base[0, 10:12], atol=1e-4), "the prefix is bidirectional in its document"


@pytest.mark.parametrize("name", ["gpt", "llama-rope", "llama-alibi", "llama-learned"])
def test_prefix_aware_generation_reads_the_prompt_both_ways_with_a_correct_cache(name):
    net = NETS[name]()
    prompt = torch.from_numpy(np.stack(rows(2))[:, :7]).long()
    cached = generation.sample_after_prefix(net, prompt, 20, temperature=0.0, use_cache=True)
    assert torch.equal(cached, generation.sample_after_prefix(net, prompt, 20, temperature=0.0, use_cache=False))
    sampled = [
        generation.sample_after_prefix(
            net, prompt, 20, temperature=1.0, top_k=10, use_cache=c, generator=torch.Generator().manual_seed(3)
        )
        for c in (True, False)
    ]
    assert torch.equal(*sampled)
    # the first new token comes from the bidirectional encoding of the prompt, not the causal one
    first = prefix_logits(net, prompt, 7)[:, -1].argmax(-1)
    assert torch.equal(cached[:, 7], first)
    assert not torch.allclose(prefix_logits(net, prompt, 7)[:, :-1], net(prompt)[:, :-1], atol=1e-4)
    lm = PrefixLM(net=net, optimizer=None)
    assert torch.equal(lm.generate(prompt, 20, temperature=0.0), cached)


@pytest.mark.parametrize(
    "bounds, fragment",
    [((0.25, 1.0), "leaving no suffix"), ((0.8, 0.5), "0 <= prefix_min <= prefix_max"), ((0.51, 0.52), "whole number")],
)
def test_bad_split_bounds_are_refused_with_the_keys(bounds, fragment):
    with pytest.raises(ConfigError, match=fragment):
        prefix_bounds(*bounds, block_len=32)


def test_bad_split_bounds_stop_the_objective_before_any_data():
    with pytest.raises(ConfigError, match="model.prefix_max=1.0"):
        PrefixLM(net=NETS["gpt"](), optimizer=None, prefix_max=1.0)


# ------------------------------------------------------------------ learning


# each token is followed by one of FANOUT tokens, uniformly: floor = ln FANOUT nats on every target


class Seeded:
    """The loader's contract: the builder gets an rng per batch (here from a running counter)."""

    def __init__(self, builder):
        self.builder, self.calls = builder, 0

    def __call__(self, blocks):
        self.calls += 1
        return self.builder(blocks, np.random.default_rng(self.calls))


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_prefix_lm_loss_falls_to_the_entropy_floor_on_the_suffix(tmp_path, family):
    floor, seq = math.log(FANOUT), 32
    blocks = list(markov_stream(seq * 2048, seed=0).reshape(-1, seq))
    val_blocks = list(markov_stream(seq * 64, seed=0).reshape(-1, seq))
    builder = PrefixBatches(seq, eos_id=None, prefix_min=0.25, prefix_max=0.75)
    train = DataLoader(blocks, batch_size=32, shuffle=True, collate_fn=Seeded(builder))
    val = DataLoader(val_blocks, batch_size=64, collate_fn=Seeded(builder))
    torch.manual_seed(0)
    kw = dict(vocab_size=VOCAB, max_seq_len=seq, n_layer=1, n_head=2, d_model=32)
    net = GPT(**kw) if family == "gpt" else Llama(**kw, n_kv_head=1)
    model = PrefixLM(
        net=net,
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0),
        scheduler=functools.partial(warmup_cosine, warmup_steps=10),
    )
    trainer = fit_then_validate(model, train, val, steps=250, root=tmp_path)
    val_loss = float(trainer.callback_metrics["val/loss"])
    assert val_loss < floor + 0.08, f"val/loss {val_loss:.3f} should approach the floor {floor:.3f}"
    assert val_loss > floor - 0.05, f"val/loss {val_loss:.3f} below the entropy floor {floor:.3f} is impossible"
    assert math.log(VOCAB) - val_loss > 1.0
