"""The GPT model: causality and KV-cache generation."""

from __future__ import annotations

import torch

from lmforge.models.gpt import GPT
from lmforge.objectives.clm import CausalLM


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(**{"vocab_size": 97, "max_seq_len": 48, "n_layer": 2, "n_head": 4, "d_model": 32, **kw}).eval()


def test_changing_future_tokens_never_changes_past_logits():
    net = tiny_gpt()
    x = torch.randint(0, 97, (2, 40))
    base = net(x)
    for t in (0, 7, 20, 38):
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, 97, y[:, t + 1 :].shape)
        out = net(y)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5), f"logits at <= {t} changed"
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :], atol=1e-3), "future logits should change"


def test_kv_cache_forward_matches_full_forward():
    net = tiny_gpt()
    x = torch.randint(0, 97, (3, 30))
    full = net(x)
    logits, cache = net(x[:, :10], use_cache=True)
    chunks = [logits]
    for t in range(10, 30, 5):  # mixed chunk sizes exercise the offset causal mask
        logits, cache = net(x[:, t : t + 5], past_key_values=cache, use_cache=True)
        chunks.append(logits)
    assert torch.allclose(torch.cat(chunks, 1), full, atol=1e-5)


def test_cached_generation_equals_full_recomputation():
    net = tiny_gpt()
    lm = CausalLM(net=net, optimizer=None)
    prompt = torch.randint(0, 97, (2, 5))
    greedy_cached = lm.generate(prompt, 30, temperature=0.0, use_cache=True)
    greedy_full = lm.generate(prompt, 30, temperature=0.0, use_cache=False)
    assert torch.equal(greedy_cached, greedy_full)
    sampled = [
        lm.generate(prompt, 30, temperature=1.0, top_k=10, use_cache=c, generator=torch.Generator().manual_seed(3))
        for c in (True, False)
    ]
    assert torch.equal(*sampled)
    assert greedy_cached.shape == (2, 35)


def test_generation_stops_at_the_context():
    net = tiny_gpt()
    out = CausalLM(net=net, optimizer=None).generate(torch.zeros(1, 40, dtype=torch.long), 100, temperature=0.0)
    assert out.shape[1] == net.max_seq_len


def test_too_long_input_is_a_clear_error():
    net = tiny_gpt()
    try:
        net(torch.zeros(1, 49, dtype=torch.long))
    except ValueError as e:
        assert "max_seq_len" in str(e)
    else:
        raise AssertionError("a 49-token input to a 48-token model must fail")
