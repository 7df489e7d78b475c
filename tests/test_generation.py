"""lmforge.generation: batched beam search equals the per-row reference it replaced (and Hugging Face's generate),
top-k / top-p filtering equals Hugging Face's warpers, decoding runs in eval and inference mode and always gives
back the modes it found, also after an error."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge import generation
from lmforge.callbacks.samples import GeneratedSamples
from lmforge.errors import ConfigError
from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT
from lmforge.models.t5 import T5
from lmforge.parallel.wrap import transformer_blocks

V = 24  # a small vocabulary: eos is drawn often, so hypotheses finish at many different steps
EOS = 5
PAD = 0


def t5(seed: int, **kw) -> T5:
    torch.manual_seed(seed)
    net = T5(vocab_size=V, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_head=4, dropout=0.0, max_seq_len=64, **kw).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # peaked distributions, so beams part ways
    return net


def source(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(6, V, (7, 9), generator=g)
    mask = torch.ones_like(x)
    mask[2, 5:] = 0
    mask[4, 3:] = 0
    return x, mask


# ------------------------------------------------------------------ the per-row beam search that was replaced


def _step(net, seqs, enc, mask, cache, use_cache):
    if not use_cache:
        return net.decode(seqs, enc, mask)[:, -1].float(), None
    logits, cache = net.decode(seqs[:, -1:], enc, mask, past_key_values=cache, use_cache=True)
    return logits[:, -1].float(), cache


@torch.no_grad()
def reference_beam_search(net, input_ids, mask, max_new, k, lp, eos, use_cache) -> torch.Tensor:
    """Seq2SeqLM._beam before lmforge.generation, verbatim but for `self`: one Python loop over the rows per step."""
    c = net.config
    max_new = min(max_new, net.max_seq_len - 1)
    enc = net.encode(input_ids, mask)
    b, dev = enc.size(0), enc.device
    enc = enc.repeat_interleave(k, dim=0)
    mask = None if mask is None else mask.repeat_interleave(k, dim=0)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    seqs = torch.full((b * k, 1), c.decoder_start_token_id, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    cache = None
    for step in range(max_new):
        logits, cache = _step(net, seqs, enc, mask, cache, use_cache)
        logp = torch.log_softmax(logits, dim=-1)
        vocab = logp.size(-1)
        cand = (scores.reshape(-1, 1) + logp).view(b, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        next_scores = torch.zeros(b, k, device=dev)
        next_rows = torch.arange(b * k, device=dev).view(b, k).clone()
        next_tokens = torch.full((b, k), c.pad_token_id, dtype=torch.long, device=dev)
        for i in range(b):
            if done[i]:
                continue
            j = 0
            for rank, (s, idx) in enumerate(zip(top_scores[i], top_idx[i])):
                row, tok = i * k + idx // vocab, idx % vocab
                if eos is not None and tok == eos:
                    if rank < k:
                        finished[i].append((s / (step + 1) ** lp, seqs[row, 1:].tolist() + [tok]))
                    continue
                next_scores[i, j], next_rows[i, j], next_tokens[i, j] = s, row, tok
                j += 1
                if j == k:
                    break
            done[i] = len(finished[i]) >= k
        if all(done):
            break
        rows = next_rows.view(-1)
        seqs = torch.cat([seqs[rows], next_tokens.view(-1, 1)], dim=1)
        if cache is not None:
            cache = net.reorder_cache(cache, rows)
        scores = next_scores
    best = []
    for i in range(b):
        hyps = list(finished[i])
        if not done[i]:
            n = seqs.size(1) - 1
            hyps += [(scores[i, j].item() / max(n, 1) ** lp, seqs[i * k + j, 1:].tolist()) for j in range(k)]
        best.append(max(hyps, key=lambda h: h[0])[1])
    out = torch.full((b, max(map(len, best))), c.pad_token_id, dtype=torch.long, device=dev)
    for i, seq in enumerate(best):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out if out.size(1) else out.new_full((b, 1), c.pad_token_id)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "beams,length_penalty,max_new", [(2, 1.0, 12), (3, 0.0, 10), (4, 2.0, 14), (4, -0.5, 6), (5, 1.0, 1)]
)
def test_batched_beam_search_equals_the_per_row_reference(seed, beams, length_penalty, max_new):
    net = t5(seed)
    x, mask = source(seed)
    kw = dict(max_new_tokens=max_new, num_beams=beams, length_penalty=length_penalty, eos_id=EOS)
    ref = reference_beam_search(net, x, mask, max_new, beams, length_penalty, EOS, True)
    for use_cache in (True, False):
        assert torch.equal(generation.beam_search(net, x, mask, use_cache=use_cache, **kw), ref)


def test_the_reference_comparison_covers_every_way_a_row_ends():
    """Rows that finish early, rows cut by the length, rows whose best hypothesis is shorter than another row's."""
    ended = cut = 0
    for seed in range(4):
        out = generation.beam_search(t5(seed), *source(seed), max_new_tokens=12, num_beams=2, eos_id=EOS)
        ends_with_eos = torch.tensor([EOS in row.tolist() for row in out])
        ended, cut = ended + int(ends_with_eos.sum()), cut + int((~ends_with_eos).sum())
    assert ended >= 5 and cut >= 3, (ended, cut)


def test_beam_search_without_eos_and_without_a_mask_equals_the_reference():
    net = t5(7)
    x, _ = source(7)
    ref = reference_beam_search(net, x, None, 8, 3, 1.0, None, True)
    assert torch.equal(generation.beam_search(net, x, None, max_new_tokens=8, num_beams=3, eos_id=None), ref)
    assert ref.shape == (7, 8)


def test_decoding_stops_at_the_context():
    torch.manual_seed(0)
    short = T5(vocab_size=V, d_model=16, d_kv=4, d_ff=16, n_layer=1, n_head=2, dropout=0.0, max_seq_len=5).eval()
    x = torch.randint(6, V, (2, 4))
    assert generation.greedy(short, x, max_new_tokens=50).shape == (2, 4)  # the start token takes a position
    assert generation.beam_search(short, x, max_new_tokens=50, num_beams=2).shape == (2, 4)


@pytest.mark.parametrize("beams,length_penalty", [(2, 1.0), (3, 0.5), (4, 2.0)])
def test_beam_search_matches_hf_generate(beams, length_penalty):
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmforge.models.hf import to_hf

    net = t5(1)
    hf = to_hf(net).eval()
    x, mask = source(1)
    ours = generation.beam_search(net, x, mask, 10, beams, length_penalty, EOS)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=x,
            attention_mask=mask,
            max_new_tokens=10,
            num_beams=beams,
            do_sample=False,
            early_stopping=True,
            length_penalty=length_penalty,
            decoder_start_token_id=0,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )[:, 1:]
    width = max(ours.size(1), ref.size(1))
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.size(1)), value=PAD)  # noqa: E731
    assert torch.equal(pad(ours), pad(ref))


# ------------------------------------------------------------------ sampling filters


@pytest.mark.parametrize("top_k,top_p", [(None, 0.9), (None, 0.3), (5, None), (5, 0.8), (None, 1e-6)])
def test_top_k_and_top_p_filter_as_hf_warpers(top_k, top_p):
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    expected = logits
    if top_k:
        expected = transformers.TopKLogitsWarper(top_k)(None, expected)
    if top_p:
        expected = transformers.TopPLogitsWarper(top_p)(None, expected)
    ours = generation.keep_top_p(generation.keep_top_k(logits, top_k), top_p)
    assert torch.equal(ours, expected)
    assert (ours > float("-inf")).sum(1).min() >= 1  # the most likely token always stays


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=97, max_seq_len=48, n_layer=2, n_head=4, d_model=32).eval()


def test_top_p_of_one_changes_nothing_and_a_tiny_top_p_is_greedy():
    net, prompt = tiny_gpt(), torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(1))

    def sampled(**kw):
        return generation.sample(net, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(3), **kw)

    assert torch.equal(sampled(top_p=None), sampled(top_p=1.0))
    assert torch.equal(sampled(top_k=10), sampled(top_k=10, top_p=1.0))
    assert not torch.equal(sampled(top_p=0.5), sampled(top_p=None))
    assert torch.equal(sampled(top_p=1e-6), generation.sample(net, prompt, 20, temperature=0.0))


def test_nucleus_sampling_draws_only_from_the_nucleus():
    net, prompt = tiny_gpt(), torch.zeros(64, 1, dtype=torch.long)
    with torch.no_grad():
        probs = torch.softmax(net(prompt[:1])[0, -1].float(), -1)
    ascending, order = probs.sort()
    nucleus = set(order[ascending.cumsum(0) > 1 - 0.6].tolist())
    drawn = generation.sample(net, prompt, 1, top_p=0.6, generator=torch.Generator().manual_seed(0))[:, 1]
    assert set(drawn.tolist()) <= nucleus and len(set(drawn.tolist())) > 1


def test_top_p_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="top_p"):
        generation.sample(tiny_gpt(), torch.zeros(1, 1, dtype=torch.long), 3, top_p=0.0)
    with pytest.raises(ConfigError, match="callbacks.samples.top_p=1.5"):
        GeneratedSamples(output_dir=str(tmp_path), top_p=1.5)


# ------------------------------------------------------------------ modes


def decoding_calls():
    gpt, enc_dec = tiny_gpt(), t5(0)
    torch.manual_seed(0)
    bert = BERT(vocab_size=V, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=32).eval()
    x = torch.randint(6, V, (2, 5))
    return {
        "sample": (gpt, lambda: generation.sample(gpt, x, 4, temperature=1.0, top_k=5, top_p=0.9)),
        "greedy": (enc_dec, lambda: generation.greedy(enc_dec, x, max_new_tokens=4, eos_id=EOS)),
        "beam_search": (enc_dec, lambda: generation.beam_search(enc_dec, x, max_new_tokens=4, eos_id=EOS)),
        "fill_mask": (bert, lambda: generation.fill_mask(bert, x)),
    }


@pytest.mark.parametrize("name", ["sample", "greedy", "beam_search", "fill_mask"])
def test_decoding_runs_in_eval_and_inference_mode_and_restores_the_modes(name):
    net, call = decoding_calls()[name]
    net.train()
    first_block = transformer_blocks(net)[0]
    first_block.eval()  # a submodule in its own mode gets it back, not its parent's
    seen = []
    for block in transformer_blocks(net)[1:]:  # every forward, also through T5's encode/decode entry points
        block.register_forward_pre_hook(lambda m, args: seen.append((m.training, torch.is_inference_mode_enabled())))
    out = call()
    assert seen and all(mode == (False, True) for mode in seen)
    inside = list(first_block.modules())
    assert not any(m.training for m in inside)
    assert all(m.training for m in net.modules() if not any(m is i for i in inside))
    assert not out.is_inference(), "results are ordinary tensors, usable outside inference mode"


@pytest.mark.parametrize("name", ["sample", "greedy", "beam_search", "fill_mask"])
def test_modes_are_restored_after_an_error_inside_decoding(name):
    net, call = decoding_calls()[name]
    net.train()

    def fail(module, args):
        raise RuntimeError("a forward that fails")

    transformer_blocks(net)[-1].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="a forward that fails"):
        call()
    assert all(m.training for m in net.modules())
    assert not torch.is_inference_mode_enabled()


def test_eval_mode_restores_on_an_error():
    net = tiny_gpt().train()
    with pytest.raises(KeyError), generation.eval_mode(net):
        assert not any(m.training for m in net.modules())
        raise KeyError("inside")
    assert all(m.training for m in net.modules())


def test_a_net_of_the_wrong_kind_is_a_clear_error():
    with pytest.raises(TypeError, match="encoder-decoder"):
        generation.beam_search(tiny_gpt(), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="encoder-decoder"):
        generation.greedy(tiny_gpt(), torch.zeros(1, 3, dtype=torch.long))
