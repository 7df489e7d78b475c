"""lmforge <-> Hugging Face: same logits on the same weights, both directions, for GPT-2,
BERT, T5 (v1.0 and v1.1) and Llama (GQA, MQA, tied and untied), and saved folders that `transformers` loads.
Random init from configs only; nothing is downloaded."""

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub, even by accident

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lmforge.models.bert import BERT  # noqa: E402
from lmforge.models.gpt import GPT  # noqa: E402
from lmforge.models.hf import from_hf, hf_tokenizer, load_hf_folder, save_hf_folder, to_hf  # noqa: E402
from lmforge.models.llama import Llama  # noqa: E402
from lmforge.models.t5 import T5, relative_position_bucket  # noqa: E402

V, TOL = 40, 1e-4
NETS = {
    "gpt": lambda: GPT(vocab_size=V, max_seq_len=16, n_layer=2, n_head=2, d_model=16),
    "gpt-nobias": lambda: GPT(vocab_size=V, max_seq_len=16, n_layer=2, n_head=2, d_model=16, bias=False, mlp_ratio=2),
    "bert": lambda: BERT(vocab_size=V, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=24),
    "llama": lambda: Llama(vocab_size=V, max_seq_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=16, d_ff=24),
    "llama-mqa-tied": lambda: Llama(
        vocab_size=V,
        max_seq_len=16,
        n_layer=2,
        n_head=4,
        n_kv_head=1,
        d_model=32,
        d_ff=40,
        rope_theta=500.0,
        tie_word_embeddings=True,
    ),
    "t5-v1.0": lambda: T5(
        vocab_size=V,
        d_model=16,
        d_kv=4,
        d_ff=24,
        n_layer=2,
        n_decoder_layer=3,
        n_head=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
    ),
    "t5-v1.1": lambda: T5(
        vocab_size=V,
        d_model=16,
        d_kv=4,
        d_ff=24,
        n_layer=2,
        n_decoder_layer=1,
        n_head=3,
        feed_forward="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
    ),
}
HF_MODELS = {
    "gpt": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=48)
    ),
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=16,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
            tie_word_embeddings=False,
        )
    ),
    "llama-mha-tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=V,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            tie_word_embeddings=True,
        )
    ),
    "bert": lambda: transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=V,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=16,
            type_vocab_size=3,
        )
    ),
    "t5-v1.0": lambda: transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=V, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1, num_heads=2
        )
    ),
    "t5-v1.1": lambda: transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=V,
            d_model=16,
            d_kv=4,
            d_ff=24,
            num_layers=1,
            num_decoder_layers=2,
            num_heads=2,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            relative_attention_num_buckets=16,
        )
    ),
}
AUTO = {
    "gpt": "AutoModelForCausalLM",
    "llama": "AutoModelForCausalLM",
    "bert": "AutoModelForMaskedLM",
    "t5": "AutoModelForSeq2SeqLM",
}


@pytest.fixture(autouse=True)
def _seed_and_tmp(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@torch.no_grad()
def perturb(model: nn.Module) -> nn.Module:
    """Move every weight off its init (zero biases, unit norms) so each one matters."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def batch():
    """Inputs with padding on the encoder side (right) and on the decoder side (left)."""
    x = torch.randint(1, V, (2, 11))
    mask = torch.ones_like(x)
    mask[1, 7:] = 0
    y = torch.randint(1, V, (2, 6))
    dmask = torch.ones_like(y)
    dmask[1, :2] = 0
    tt = (torch.arange(11) >= 5).long().expand(2, -1)
    return x, mask, y, dmask, tt


def logits_both(net, hf):
    """(lmforge logits, HF logits) on the same batch, padding and all."""
    x, mask, y, dmask, tt = batch()
    with torch.no_grad():
        if isinstance(net, GPT | Llama):
            return net(x), hf(x).logits
        if isinstance(net, BERT):
            return net(x, mask, tt), hf(x, attention_mask=mask, token_type_ids=tt).logits
        return (
            net(x, mask, y, dmask),
            hf(input_ids=x, attention_mask=mask, decoder_input_ids=y, decoder_attention_mask=dmask).logits,
        )


def max_diff(net, hf) -> float:
    a, b = logits_both(net, hf)
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("family", list(NETS))
def test_lmforge_to_hf_parity(family):
    net = perturb(NETS[family]())
    hf = to_hf(net)
    assert max_diff(net, hf) <= TOL
    # The comparison is live: one wrong weight shows up far above the tolerance.
    with torch.no_grad():
        next(
            p
            for n, p in hf.named_parameters()
            if n.endswith(
                ("layer_norm.weight", "ln_2.weight", "output.LayerNorm.weight", "post_attention_layernorm.weight")
            )
        ).mul_(1.5)
    assert max_diff(net, hf) > 100 * TOL


@pytest.mark.parametrize("family", list(HF_MODELS))
def test_hf_to_lmforge_parity(family):
    hf = HF_MODELS[family]()
    if family == "t5-v1.1":
        # transformers 5 ties T5's lm_head to the embeddings even for v1.1; real v1.1
        # checkpoints have their own, so give the model one.
        hf.lm_head.weight = nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.25)
    hf = perturb(hf)
    net = from_hf(hf).eval()
    assert max_diff(net, hf) <= TOL
    if family.startswith("t5"):
        assert net.config.tie_word_embeddings == (family == "t5-v1.0")
    if family.startswith("llama"):
        assert net.config.tie_word_embeddings == family.endswith("tied")
        assert net.config.n_kv_head == hf.config.num_key_value_heads


@pytest.mark.parametrize("family", list(NETS))
def test_round_trip_is_exact(family):
    net = perturb(NETS[family]())
    back = from_hf(to_hf(net))
    a, b = net.state_dict(), back.state_dict()
    if family == "gpt-nobias":  # HF GPT-2 always has biases: they come back as zeros
        assert all(torch.count_nonzero(b[k]) == 0 for k in set(b) - set(a))
        b = {k: b[k] for k in a}
    else:
        assert back.config == net.config
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_t5_cached_greedy_decoding_matches_hf_generate():
    net = perturb(NETS["t5-v1.1"]())
    hf = to_hf(net)
    x, mask, *_ = batch()
    with torch.no_grad():
        enc = net.encode(x, mask)
        ids = torch.zeros(2, 1, dtype=torch.long)  # decoder_start_token_id
        logits, cache = net.decode(ids, enc, mask, use_cache=True)
        for _ in range(7):
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            logits, cache = net.decode(ids[:, -1:], enc, mask, past_key_values=cache, use_cache=True)
        ref = hf.generate(
            input_ids=x,
            attention_mask=mask,
            max_new_tokens=7,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert torch.equal(ids, ref)


def test_relative_position_bucket_matches_hf():
    rel = torch.arange(-300, 301)[None, :]
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 12)):
            ours = relative_position_bucket(rel, bidirectional, nb, md)
            assert torch.equal(ours, bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md))


# ------------------------------------------------------------------ folders


def make_tokenizer(path, specials):
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token=specials[1]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=specials)
    tok.train_from_iterator(["to be or not to be", "that is the question"], trainer)
    tok.save(str(path))
    return path


SPECIALS = {
    "gpt": ["<|endoftext|>", "<unk>"],
    "llama": ["<|endoftext|>", "<unk>"],
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "t5": ["<pad>", "<unk>", "</s>"] + [f"<extra_id_{i}>" for i in range(3)],
}
EXPECTED = {
    "gpt": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<unk>"},
    "llama": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<unk>"},
    "bert": {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
}


@pytest.mark.parametrize("family", ["gpt", "bert", "t5-v1.0", "t5-v1.1", "llama", "llama-mqa-tied"])
def test_saved_folder_loads_in_transformers(family, tmp_path):
    kind = family.split("-")[0]
    net = perturb(NETS[family]())
    out = save_hf_folder(net, make_tokenizer(tmp_path / "tokenizer.json", SPECIALS[kind]), tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    hf, info = getattr(transformers, AUTO[kind]).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == type(to_hf(net)).__name__
    assert max_diff(net, hf.eval()) <= TOL

    tok = transformers.AutoTokenizer.from_pretrained(out)
    for role, token in EXPECTED[kind].items():
        assert getattr(tok, role) == token, role
    assert tok.model_max_length == net.max_seq_len
    ids = tok("to be or not")["input_ids"]
    assert tok.unk_token_id not in ids and max(ids) < V
    if kind in ("gpt", "llama"):
        assert hf.config.eos_token_id == tok.eos_token_id == 0

    back = load_hf_folder(out).eval()
    assert back.config == net.config
    a, b = logits_both(net, to_hf(back))
    assert torch.allclose(a, b, atol=TOL)


def test_tokenizer_roles_can_be_overridden(tmp_path):
    path = make_tokenizer(tmp_path / "tokenizer.json", ["<|endoftext|>", "<unk>", "<|pad|>"])
    tok = hf_tokenizer(path, {"bos_token": "<unk>"})
    assert tok.bos_token == "<unk>" and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"


def test_tokenizer_larger_than_model_is_refused(tmp_path):
    net = GPT(vocab_size=4, max_seq_len=8, n_layer=1, n_head=1, d_model=8)
    path = make_tokenizer(tmp_path / "tokenizer.json", SPECIALS["gpt"])
    with pytest.raises(ValueError, match="vocab_size"):
        save_hf_folder(net, path, tmp_path / "hf")


def test_unsupported_checkpoints_are_refused(tmp_path):
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=V,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=24,
            hidden_act="relu",
        )
    )
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf(bert)
    with pytest.raises(TypeError, match="BertForMaskedLM"):
        from_hf(transformers.BertModel(bert.config))
    with pytest.raises(TypeError, match="GPT, BERT, T5 or Llama"):
        to_hf(nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_folder(tmp_path)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
        to_hf(NETS["gpt"]())


def test_llama_choices_hugging_face_cannot_hold_are_refused_on_export():
    for choice in ("position=alibi", "norm=layernorm", "mlp=gelu", "position=learned"):
        key, value = choice.split("=")
        net = Llama(vocab_size=V, max_seq_len=16, n_layer=1, n_head=2, d_model=16, **{key: value})
        with pytest.raises(ValueError, match=f"model.net.{key}={value}.*no Hugging Face export"):
            to_hf(net)


def test_hf_llama_settings_lmforge_lacks_are_refused():
    base = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
    for extra, named in (
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope_type='linear'"),
        ({"head_dim": 4}, "head_dim=4"),
    ):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base, **extra))
        with pytest.raises(ValueError, match=named):
            from_hf(hf)


def test_a_folder_of_an_architecture_without_a_family_names_the_supported_ones(tmp_path):
    mistral = transformers.MistralForCausalLM(
        transformers.MistralConfig(
            vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2
        )
    )
    mistral.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='mistral'.*'gpt2', 'llama'"):
        load_hf_folder(tmp_path)


def test_llama_cached_greedy_decoding_matches_hf_generate():
    """RoPE at every KV-cache offset, GQA's shared kv heads: the same continuation as transformers' own cache."""
    from lmforge import generation

    net = perturb(NETS["llama"]())
    hf = to_hf(net)
    prompt = torch.randint(1, V, (2, 4))
    ours = generation.sample(net, prompt, max_new_tokens=10, temperature=0.0)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert torch.equal(ours, ref)
