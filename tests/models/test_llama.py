"""The Llama family: causality and KV-cache generation for every position choice and attention grouping, parameter
counts equal to Hugging Face's LlamaForCausalLM (the SmolLM-135M preset included), meta-device init, bad configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub, even by accident

import pytest
import torch
from conftest import REPO

from lmforge.errors import ConfigError
from lmforge.models.llama import Llama, RMSNorm
from lmforge.models.positions import POSITIONS
from lmforge.objectives.clm import CausalLM
from lmforge.parallel.init import materialize

V = 97
VARIANTS = {  # (position, n_kv_head, norm, mlp): every position, and MHA / GQA / MQA
    **{p: dict(position=p, n_kv_head=2) for p in POSITIONS},
    "rope-mha": dict(n_kv_head=4),
    "rope-mqa": dict(n_kv_head=1),
    "layernorm-gelu": dict(norm="layernorm", mlp="gelu", n_kv_head=1, position="alibi"),
}


def tiny_llama(**kw) -> Llama:
    torch.manual_seed(0)
    net = Llama(**{"vocab_size": V, "max_seq_len": 48, "n_layer": 2, "n_head": 4, "d_model": 32, **kw})
    with torch.no_grad():  # off the init (unit norms), so every weight matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_changing_future_tokens_never_changes_past_logits(variant):
    net = tiny_llama(**VARIANTS[variant])
    x = torch.randint(0, V, (2, 40))
    base = net(x)
    for t in (0, 7, 20, 38):
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, V, y[:, t + 1 :].shape)
        out = net(y)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5), f"logits at <= {t} changed"
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :], atol=1e-3), "future logits should change"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_forward_matches_full_forward(variant):
    net = tiny_llama(**VARIANTS[variant])
    x = torch.randint(0, V, (3, 30))
    full = net(x)
    logits, cache = net(x[:, :10], use_cache=True)
    assert cache[0][0].shape == (3, net.config.n_kv_head, 10, 8)  # the cache holds the kv heads only
    chunks = [logits]
    for t, n in ((10, 5), (15, 1), (16, 1), (17, 6), (23, 7)):  # chunks and single tokens: offset masks and RoPE
        logits, cache = net(x[:, t : t + n], past_key_values=cache, use_cache=True)
        chunks.append(logits)
    assert torch.allclose(torch.cat(chunks, 1), full, atol=1e-5)


@pytest.mark.parametrize("variant", ["rope", "rope-mqa", "alibi", "learned", "sinusoidal", "none"])
def test_cached_generation_equals_full_recomputation(variant):
    lm = CausalLM(net=tiny_llama(**VARIANTS[variant]), optimizer=None)
    prompt = torch.randint(0, V, (2, 5))
    greedy_cached = lm.generate(prompt, 30, temperature=0.0, use_cache=True)
    assert torch.equal(greedy_cached, lm.generate(prompt, 30, temperature=0.0, use_cache=False))
    sampled = [
        lm.generate(prompt, 30, temperature=1.0, top_k=10, use_cache=c, generator=torch.Generator().manual_seed(3))
        for c in (True, False)
    ]
    assert torch.equal(*sampled)
    assert greedy_cached.shape == (2, 35)


def test_positions_make_a_difference_and_none_is_order_blind_but_causal():
    x = torch.randint(0, V, (1, 12))
    outs = {p: tiny_llama(position=p)(x) for p in POSITIONS}
    assert all(not torch.allclose(outs["none"], outs[p], atol=1e-3) for p in POSITIONS if p != "none")
    # NoPE: the first token sees only itself, so its logits do not depend on where the rest of the sequence is.
    net = tiny_llama(position="none")
    assert torch.allclose(net(x[:, :1]), net(x)[:, :1], atol=1e-5)


def test_generation_stops_at_the_context_and_learned_positions_stop_at_their_table():
    net = tiny_llama(position="learned")
    out = CausalLM(net=net, optimizer=None).generate(torch.zeros(1, 40, dtype=torch.long), 100, temperature=0.0)
    assert out.shape[1] == net.max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        net(torch.zeros(1, 49, dtype=torch.long))
    tiny_llama(position="rope")(torch.zeros(1, 60, dtype=torch.long))  # computed positions run past it


@pytest.mark.parametrize("tie", [True, False])
def test_tied_or_untied_embeddings(tie):
    net = tiny_llama(tie_word_embeddings=tie)
    assert (net.lm_head.weight is net.wte.weight) == tie
    untied = sum(p.numel() for p in tiny_llama(tie_word_embeddings=False).parameters())
    assert net.num_parameters() == untied - (V * 32 if tie else 0)


def test_no_biases_and_rmsnorm_as_hugging_face():
    transformers = pytest.importorskip("transformers")
    net = tiny_llama()
    assert not [n for n, _ in net.named_parameters() if n.endswith("bias")]
    ours, theirs = RMSNorm(32, 1e-5), transformers.models.llama.modeling_llama.LlamaRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 32, dtype=dtype)
        assert torch.equal(ours.to(dtype)(x), theirs.to(dtype)(x))


@pytest.mark.parametrize(
    "kw", [dict(n_kv_head=4), dict(n_kv_head=1), dict(n_kv_head=2, tie_word_embeddings=False), dict(d_ff=40)]
)
def test_parameter_count_equals_hugging_faces(kw):
    pytest.importorskip("transformers")
    from lmforge.models.hf import to_hf

    net = tiny_llama(**kw)
    assert net.num_parameters() == to_hf(net).num_parameters()


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def test_smollm_preset_has_smollm_135ms_parameters():
    transformers = pytest.importorskip("transformers")
    from hydra.utils import instantiate

    from lmforge.models.llama_hf import ADAPTER

    cfg = compose(["model=smollm_135m", "model.net.vocab_size=49152"])
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
        hf = transformers.LlamaForCausalLM(ADAPTER.to_hf_config(net))
    c = net.config
    assert (c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.d_ff, c.max_seq_len) == (30, 576, 9, 3, 1536, 2048)
    assert c.tie_word_embeddings and c.rope_theta == 10000.0 and c.norm_eps == 1e-5
    assert net.num_parameters() == hf.num_parameters() == 134_515_008  # SmolLM-135M's published count


def test_default_config_is_sized_like_gpt():
    cfg = compose(["model=llama"]).model.net
    assert (cfg.n_layer, cfg.d_model, cfg.position, cfg.norm, cfg.mlp) == (4, 256, "rope", "rmsnorm", "swiglu")
    tiny = compose(["model=llama_tiny"]).model.net
    assert (tiny.n_layer, tiny.d_model, tiny.max_seq_len) == (2, 32, 128)


@pytest.mark.parametrize("position", POSITIONS)
def test_default_llama_has_gpts_parameters_within_5_percent(position):
    """What bench/architectures.py compares: model=gpt and model=llama (any position) at the same size."""
    from hydra.utils import instantiate

    def params(overrides: list[str]) -> int:
        with torch.device("meta"):
            return instantiate(compose([*overrides, "model.net.vocab_size=2048"]).model.net).num_parameters()

    gpt = params(["model=gpt"])
    assert abs(params(["model=llama", f"model.net.position={position}"]) / gpt - 1) < 0.05


@pytest.mark.parametrize("variant", ["rope", "learned", "layernorm-gelu"])
def test_meta_device_build_gets_the_eager_weights(variant):
    kw = {"vocab_size": V, "max_seq_len": 48, "n_layer": 2, "n_head": 4, "d_model": 32, **VARIANTS[variant]}
    eager = Llama(**kw)
    torch.manual_seed(7)  # what materialize does: the draws of init_weights() from the seed, in the same order
    eager.init_weights()
    with torch.device("meta"):
        meta = Llama(**kw)
    materialize(meta, torch.device("cpu"), seed=7)
    a, b = eager.state_dict(), meta.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (meta.lm_head.weight is meta.wte.weight) == eager.config.tie_word_embeddings


BAD = {
    "heads": (dict(d_model=30, n_head=4), ["model.net.d_model=30", "model.net.n_head=4"]),
    "kv heads": (
        dict(n_head=6, n_kv_head=4, d_model=48),
        ["model.net.n_head=6", "model.net.n_kv_head=4", "1, 2, 3, 6"],
    ),
    "odd rope head": (dict(n_head=4, d_model=36), ["model.net.position=rope", "9", "odd"]),
    "position": (dict(position="rotary"), ["model.net.position='rotary'", "alibi"]),
    "norm": (dict(norm="batchnorm"), ["model.net.norm='batchnorm'", "rmsnorm, layernorm"]),
    "mlp": (dict(mlp="relu"), ["model.net.mlp='relu'", "swiglu, gelu"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_configs_name_the_key_and_the_accepted_values(name):
    kw, fragments = BAD[name]
    with pytest.raises(ConfigError) as e:
        Llama(**{"vocab_size": V, "max_seq_len": 16, "n_layer": 1, "n_head": 4, "d_model": 32, **kw})
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


@pytest.mark.parametrize("variant", ["rope", "alibi"])
def test_activation_checkpointing_keeps_loss_and_gradients(variant):
    from lmforge.parallel.wrap import checkpoint_blocks, transformer_blocks

    plain, checkpointed = tiny_llama(**VARIANTS[variant]).train(), tiny_llama(**VARIANTS[variant]).train()
    checkpoint_blocks(transformer_blocks(checkpointed))
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for net in (plain, checkpointed):
        loss = net(ids).logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (_, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
