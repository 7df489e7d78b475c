"""BERT and T5 in plain PyTorch: masking, causality, the KV cache, config checks, and that
they learn. Tiny configs, CPU, a few seconds."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.models.bert import BERT
from lmforge.models.t5 import T5, relative_position_bucket, shift_right

V = 48
BERT_KW = dict(vocab_size=V, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=32, dropout=0.0)
T5_KW = dict(
    vocab_size=V, d_model=16, d_kv=8, d_ff=32, n_layer=2, n_decoder_layer=2, n_head=2, dropout=0.0, max_seq_len=32
)
T5_VARIANTS = {
    "v1.0": dict(feed_forward="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward="gated-gelu", tie_word_embeddings=False),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def t5(variant="v1.0", **kw):
    return T5(**{**T5_KW, **T5_VARIANTS[variant], **kw}).eval()


# ------------------------------------------------------------------ BERT


def test_bert_shapes_and_helpers():
    net = BERT(**BERT_KW).eval()
    x = torch.randint(0, V, (3, 10))
    assert net(x).shape == (3, 10, V)
    assert net.max_seq_len == 16
    assert net.lm_head.weight is net.wte.weight  # tied decoder
    assert BERT(**net.config_dict()).num_parameters() == net.num_parameters()
    assert net.num_parameters(exclude_embeddings=True) == net.num_parameters() - (16 + 2) * 16


def test_bert_padding_does_not_leak():
    net = BERT(**BERT_KW).eval()
    x = torch.randint(1, V, (2, 10))
    mask = torch.ones_like(x)
    mask[0, 6:] = 0
    mask[1, 3:] = 0
    y = x.clone()
    y[0, 6:] = torch.randint(1, V, (4,))
    y[1, 3:] = torch.randint(1, V, (7,))
    a, b = net(x, attention_mask=mask), net(y, attention_mask=mask)
    keep = mask.bool()
    assert torch.allclose(a[keep], b[keep], atol=1e-7)
    # Without the mask the same change does reach the real tokens (the check can fail).
    assert (net(x)[keep] - net(y)[keep]).abs().max() > 1e-5


def test_bert_token_types_change_the_output():
    net = BERT(**BERT_KW).eval()
    x = torch.randint(0, V, (1, 8))
    tt = torch.zeros_like(x)
    assert torch.equal(net(x), net(x, token_type_ids=tt))
    tt[0, 4:] = 1
    assert (net(x) - net(x, token_type_ids=tt)).abs().max() > 1e-3


def test_bert_pad_embedding_starts_at_zero():
    net = BERT(**BERT_KW)
    assert torch.count_nonzero(net.wte.weight[0]) == 0
    assert net.wte.weight[1:].std().item() == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize("build", [lambda: BERT(**BERT_KW), lambda: t5()])
def test_too_long_input_is_refused(build):
    net = build()
    x = torch.zeros(1, net.max_seq_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len"):
        net(x) if isinstance(net, BERT) else net(x, decoder_input_ids=x[:, :2])


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: BERT(**{**BERT_KW, "n_head": 3}), "n_head"),
        (lambda: BERT(**{**BERT_KW, "pad_token_id": V}), "pad_token_id"),
        (lambda: T5(**{**T5_KW, "feed_forward": "swiglu"}), "feed_forward"),
        (lambda: T5(**{**T5_KW, "decoder_start_token_id": -1}), "decoder_start_token_id"),
    ],
)
def test_bad_config_names_the_key(build, key):
    with pytest.raises(ValueError, match=key):
        build()


# ------------------------------------------------------------------ T5


def test_shift_right():
    labels = torch.tensor([[5, 6, 7, -100], [8, -100, -100, -100]])
    out = shift_right(labels, decoder_start_token_id=2, pad_token_id=0)
    assert out.tolist() == [[2, 5, 6, 7], [2, 8, 0, 0]]
    assert labels[0, 3] == -100  # input untouched


def test_relative_position_bucket_values():
    rel = torch.arange(-200, 201)
    bi = relative_position_bucket(rel, True, 32, 128)
    causal = relative_position_bucket(rel, False, 32, 128)
    assert bi.min() == 0 and bi.max() == 31 and causal.max() == 31
    assert bi[200 + 3] == 16 + 3 and bi[200 - 3] == 3  # exact buckets near zero, split by direction
    assert bi[200 + 150] == 31 and bi[0] == 15  # beyond max_distance: the last bucket
    assert (causal[rel > 0] == 0).all() and causal[200 - 5] == 5  # the future is one bucket


def test_t5_shapes_tying_and_helpers():
    for variant, tied in (("v1.0", True), ("v1.1", False)):
        net = t5(variant)
        x, y = torch.randint(0, V, (2, 7)), torch.randint(0, V, (2, 5))
        assert net(x, decoder_input_ids=y).shape == (2, 5, V)
        assert (net.lm_head.weight is net.shared.weight) == tied
        assert T5(**net.config_dict()).num_parameters() == net.num_parameters()
        assert net.num_parameters(exclude_embeddings=True) == net.num_parameters() - 2 * 32 * 2
    with pytest.raises(ValueError, match="decoder_input_ids"):
        net(x)


@pytest.mark.parametrize("variant", list(T5_VARIANTS))
def test_t5_decoder_is_causal(variant):
    net = t5(variant)
    x, y = torch.randint(1, V, (2, 7)), torch.randint(1, V, (2, 8))
    t = 4
    z = y.clone()
    z[:, t] = (y[:, t] + 1) % V
    a, b = net(x, decoder_input_ids=y), net(x, decoder_input_ids=z)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=(0, 2)).min() > 1e-4  # every later position sees it


def test_t5_encoder_padding_does_not_leak():
    net = t5("v1.1")
    x, y = torch.randint(1, V, (2, 9)), torch.randint(1, V, (2, 5))
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    x2 = x.clone()
    x2[1, 5:] = torch.randint(1, V, (4,))
    a, b = net(x, mask, y), net(x2, mask, y)
    assert torch.allclose(a, b, atol=1e-6)
    assert (net(x, decoder_input_ids=y) - net(x2, decoder_input_ids=y))[1].abs().max() > 1e-4


@pytest.mark.parametrize("variant", list(T5_VARIANTS))
def test_t5_kv_cache_matches_full_decoding(variant):
    net = t5(variant)
    x, y = torch.randint(1, V, (3, 9)), torch.randint(1, V, (3, 7))
    mask = torch.ones_like(x)
    mask[2, 4:] = 0
    full = net(x, mask, y)
    enc = net.encode(x, mask)
    # A 3-token prefix, then one token at a time, as a decoding loop does.
    logits, cache = net.decode(y[:, :3], enc, mask, use_cache=True)
    steps = [logits]
    for i in range(3, y.size(1)):
        logits, cache = net.decode(y[:, i : i + 1], None, mask, past_key_values=cache, use_cache=True)
        steps.append(logits)
    assert len(cache) == 2 and cache[0][0].shape == (3, 2, 7, 8) and cache[0][2].shape == (3, 2, 9, 8)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # Reordering the cache (beam search) is the same as reordering the batch.
    idx = torch.tensor([2, 0, 0])
    _, cache = net.decode(y[:, :3], enc, mask, use_cache=True)
    nxt = net.decode(y[idx, 3:4], enc[idx], mask[idx], past_key_values=T5.reorder_cache(cache, idx))
    assert torch.allclose(nxt, full[idx, 3:4], atol=1e-5)


def test_t5_decoder_attention_mask_hides_padded_targets():
    net = t5("v1.0")
    x, y = torch.randint(1, V, (1, 6)), torch.randint(1, V, (1, 6))
    dmask = torch.tensor([[0, 0, 1, 1, 1, 1]])  # left padding: causality alone would not hide it
    z = y.clone()
    z[0, :2] = (y[0, :2] + 1) % V
    a, b = net(x, None, y, dmask), net(x, None, z, dmask)
    assert torch.allclose(a[:, 2:], b[:, 2:], atol=1e-6)
    assert (net(x, None, y)[:, 2:] - net(x, None, z)[:, 2:]).abs().max() > 1e-4


# ------------------------------------------------------------------ they learn


@pytest.mark.parametrize("family", ["bert", "t5-v1.0", "t5-v1.1"])
def test_overfits_one_batch(family):
    net = BERT(**BERT_KW) if family == "bert" else t5(family[3:])
    net.train()
    x = torch.randint(1, V, (4, 12))
    y = torch.randint(1, V, (4, 8))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = net(x) if family == "bert" else net(x, decoder_input_ids=shift_right(y, 0, 0))
        loss = F.cross_entropy(logits.flatten(0, 1), (x if family == "bert" else y).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] < 6.0, losses[0]  # a sane init: near log(V) = 3.9, not blown up
    assert losses[-1] < 0.5 * losses[0], losses
