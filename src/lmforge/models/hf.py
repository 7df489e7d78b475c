"""Conversion between lmforge nets and Hugging Face `transformers` models, both ways:
GPT <-> GPT2LMHeadModel, BERT <-> BertForMaskedLM, T5 <-> T5ForConditionalGeneration.

Each family has one table of (lmforge key, HF key, transpose) used in both directions, and
every copy checks that both state dicts are covered, so a forgotten weight is an error, not a
silently random layer. `transformers` is an optional extra, imported only inside functions.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT
from lmforge.models.t5 import T5

Pairs = list[tuple[str, str, bool]]  # (lmforge key, HF key, transpose)
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration"}


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            'Hugging Face interop needs the "hf" extra (transformers, safetensors): pip install -e ".[hf]"'
        ) from e
    return transformers


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)  # a torch.compile'd net keeps the module here


# ---------------------------------------------------------------- key tables


def _gpt_pairs(n_layer: int) -> Pairs:
    # HF GPT-2 uses Conv1D, whose weight is (in, out): transpose the Linear weights.
    pairs = [
        ("wte.weight", "transformer.wte.weight", False),
        ("wpe.weight", "transformer.wpe.weight", False),
        ("lm_head.weight", "lm_head.weight", False),
    ]
    for i in range(n_layer):
        a, b = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs, t in [
            ("ln_1", "ln_1", False),
            ("attn.qkv", "attn.c_attn", True),
            ("attn.proj", "attn.c_proj", True),
            ("ln_2", "ln_2", False),
            ("mlp.fc", "mlp.c_fc", True),
            ("mlp.proj", "mlp.c_proj", True),
        ]:
            pairs += [
                (a + ours + ".weight", b + theirs + ".weight", t),
                (a + ours + ".bias", b + theirs + ".bias", False),
            ]
    for p in ("weight", "bias"):
        pairs.append((f"ln_f.{p}", f"transformer.ln_f.{p}", False))
    return pairs


def _bert_pairs(n_layer: int) -> Pairs:
    pairs = [
        ("wte.weight", "bert.embeddings.word_embeddings.weight", False),
        ("wpe.weight", "bert.embeddings.position_embeddings.weight", False),
        ("wtt.weight", "bert.embeddings.token_type_embeddings.weight", False),
        ("lm_head.weight", "cls.predictions.decoder.weight", False),
        ("lm_head.bias", "cls.predictions.decoder.bias", False),
        ("lm_head.bias", "cls.predictions.bias", False),
    ]
    names = [
        ("ln_emb", "bert.embeddings.LayerNorm"),
        ("head_fc", "cls.predictions.transform.dense"),
        ("head_ln", "cls.predictions.transform.LayerNorm"),
    ]
    for i in range(n_layer):
        a, b = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        names += [
            (a + "attn.q", b + "attention.self.query"),
            (a + "attn.k", b + "attention.self.key"),
            (a + "attn.v", b + "attention.self.value"),
            (a + "attn.o", b + "attention.output.dense"),
            (a + "ln_1", b + "attention.output.LayerNorm"),
            (a + "mlp.fc", b + "intermediate.dense"),
            (a + "mlp.proj", b + "output.dense"),
            (a + "ln_2", b + "output.LayerNorm"),
        ]
    return pairs + [(f"{o}.{p}", f"{t}.{p}", False) for o, t in names for p in ("weight", "bias")]


def _t5_pairs(n_layer: int, n_decoder_layer: int, gated: bool) -> Pairs:
    pairs = [
        ("shared.weight", k, False)
        for k in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    ]
    pairs.append(("lm_head.weight", "lm_head.weight", False))
    mlp = [("fc", "wi_0"), ("fc_linear", "wi_1"), ("proj", "wo")] if gated else [("fc", "wi"), ("proj", "wo")]
    for stack, n in (("encoder", n_layer), ("decoder", n_decoder_layer)):
        pairs += [
            (
                f"{stack}.rel_bias.weight",
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                False,
            ),
            (f"{stack}.ln_f.weight", f"{stack}.final_layer_norm.weight", False),
        ]
        ff = 2 if stack == "decoder" else 1  # HF sublayer index of the feed-forward
        for i in range(n):
            a, b = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
            names = [("ln_1", "0.layer_norm"), ("ln_2", f"{ff}.layer_norm")]
            names += [(f"attn.{x}", f"0.SelfAttention.{x}") for x in "qkvo"]
            names += [(f"mlp.{o}", f"{ff}.DenseReluDense.{t}") for o, t in mlp]
            if stack == "decoder":
                names += [("ln_cross", "1.layer_norm")] + [
                    (f"cross_attn.{x}", f"1.EncDecAttention.{x}") for x in "qkvo"
                ]
            pairs += [(a + o + ".weight", b + t + ".weight", False) for o, t in names]
    return pairs


def _pairs(net: nn.Module) -> Pairs:
    c = getattr(net, "config", None)
    if isinstance(net, GPT):
        return _gpt_pairs(c.n_layer)
    if isinstance(net, BERT):
        return _bert_pairs(c.n_layer)
    if isinstance(net, T5):
        return _t5_pairs(c.n_layer, c.n_decoder_layer, gated=c.feed_forward == "gated-gelu")
    raise TypeError(f"no Hugging Face mapping for {type(net).__name__}; expected GPT, BERT or T5")


@torch.no_grad()
def _copy(src: nn.Module, dst: nn.Module, pairs: Pairs, to_hf: bool, zero_fill: set[str] = frozenset()) -> None:
    """Copy weights along `pairs`; every destination key must be written (or be in `zero_fill`)
    and every source key read. State-dict tensors share storage with the parameters."""
    s_sd, d_sd = src.state_dict(), dst.state_dict()
    used, written = set(), set()
    for ours, theirs, t in pairs:
        s, d = (ours, theirs) if to_hf else (theirs, ours)
        if s not in s_sd:
            if to_hf and d in zero_fill:
                continue
            raise KeyError(f"expected weight {s!r} in the source {type(src).__name__} state dict")
        w = s_sd[s].t() if t else s_sd[s]
        if d_sd[d].shape != w.shape:
            raise ValueError(f"shape mismatch copying {s} {tuple(w.shape)} -> {d} {tuple(d_sd[d].shape)}")
        d_sd[d].copy_(w)
        used.add(s)
        written.add(d)
    for d in zero_fill - written:
        d_sd[d].zero_()
        written.add(d)
    if missing := sorted(set(d_sd) - written):
        raise RuntimeError(f"conversion left {type(dst).__name__} weights unset: {missing}")
    if unused := sorted(set(s_sd) - used):
        raise RuntimeError(f"conversion ignored {type(src).__name__} weights: {unused}")


# ---------------------------------------------------------------- lmforge -> HF


def _hf_config(net: nn.Module):
    tf = _transformers()
    c = net.config
    if isinstance(net, GPT):
        return tf.GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.max_seq_len,
            n_embd=c.d_model,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_inner=c.mlp_ratio * c.d_model,
            activation_function="gelu_new",
            resid_pdrop=c.dropout,
            embd_pdrop=c.dropout,
            attn_pdrop=c.dropout,
            layer_norm_epsilon=c.layer_norm_eps,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=True,
        )
    if isinstance(net, BERT):
        return tf.BertConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head,
            intermediate_size=c.d_ff,
            hidden_act="gelu",
            hidden_dropout_prob=c.dropout,
            attention_probs_dropout_prob=c.dropout,
            max_position_embeddings=c.max_seq_len,
            type_vocab_size=c.type_vocab_size,
            layer_norm_eps=c.layer_norm_eps,
            pad_token_id=c.pad_token_id,
            tie_word_embeddings=True,
        )
    return tf.T5Config(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.d_kv,
        d_ff=c.d_ff,
        num_layers=c.n_layer,
        num_decoder_layers=c.n_decoder_layer,
        num_heads=c.n_head,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        dropout_rate=c.dropout,
        layer_norm_epsilon=c.layer_norm_eps,
        feed_forward_proj=c.feed_forward,
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
        decoder_start_token_id=c.decoder_start_token_id,
        eos_token_id=None,
        n_positions=c.max_seq_len,  # not used by HF T5; kept so from_hf restores max_seq_len
    )


def to_hf(net: nn.Module):
    """The `transformers` model (fp32, CPU, eval mode) holding a copy of `net`'s weights."""
    tf = _transformers()
    net = _unwrap(net)
    pairs = _pairs(net)  # raises TypeError for an unknown net
    config = _hf_config(net)
    hf = getattr(tf, HF_CLASSES[config.model_type])(config)
    zero_fill: set[str] = set()
    if isinstance(net, GPT) and not net.config.bias:
        zero_fill = {t for _, t, _ in pairs if t.endswith(".bias")}  # HF GPT-2 always has biases
    if isinstance(net, T5) and not net.config.tie_word_embeddings:
        # transformers 5 always ties T5's lm_head (the flag only switches the output rescale);
        # a v1.1 net has its own output layer, so give the HF model one too. Saved with both
        # tensors, it loads untied again. `tie_word_embeddings=False` in config.json keeps
        # transformers 4.x (which reads the flag literally) right as well.
        hf.lm_head.weight = nn.Parameter(hf.lm_head.weight.detach().clone())
        hf.config.tie_word_embeddings = False
    _copy(net, hf, pairs, to_hf=True, zero_fill=zero_fill)
    return hf.eval()


# ---------------------------------------------------------------- HF -> lmforge


def _unsupported(model_type: str, what: str) -> ValueError:
    return ValueError(f"cannot convert this {model_type} checkpoint: {what}")


def _net_from_hf_config(hf) -> nn.Module:
    c, mt = hf.config, hf.config.model_type
    if mt == "gpt2":
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise _unsupported(mt, f"activation_function={c.activation_function!r} (lmforge GPT uses tanh GELU)")
        if c.scale_attn_by_inverse_layer_idx or not c.scale_attn_weights or getattr(c, "add_cross_attention", False):
            raise _unsupported(mt, "non-standard attention scaling or cross-attention")
        n_inner = c.n_inner or 4 * c.n_embd
        if n_inner % c.n_embd:
            raise _unsupported(mt, f"n_inner={n_inner} is not a multiple of n_embd={c.n_embd}")
        if hf.lm_head.weight is not hf.transformer.wte.weight and not torch.equal(
            hf.lm_head.weight, hf.transformer.wte.weight
        ):
            raise _unsupported(mt, "untied lm_head (lmforge GPT ties input and output embeddings)")
        return GPT(
            vocab_size=c.vocab_size,
            max_seq_len=c.n_positions,
            n_layer=c.n_layer,
            n_head=c.n_head,
            d_model=c.n_embd,
            mlp_ratio=n_inner // c.n_embd,
            dropout=c.resid_pdrop,
            bias=True,
            layer_norm_eps=c.layer_norm_epsilon,
        )
    if mt == "bert":
        if c.hidden_act != "gelu":
            raise _unsupported(mt, f"hidden_act={c.hidden_act!r} (lmforge BERT uses exact GELU)")
        if getattr(c, "position_embedding_type", "absolute") != "absolute" or c.is_decoder:
            raise _unsupported(mt, "only absolute positions and an encoder (is_decoder=False) are supported")
        return BERT(
            vocab_size=c.vocab_size,
            max_seq_len=c.max_position_embeddings,
            n_layer=c.num_hidden_layers,
            n_head=c.num_attention_heads,
            d_model=c.hidden_size,
            d_ff=c.intermediate_size,
            type_vocab_size=c.type_vocab_size,
            dropout=c.hidden_dropout_prob,
            layer_norm_eps=c.layer_norm_eps,
            pad_token_id=c.pad_token_id,
        )
    if mt == "t5":
        if c.feed_forward_proj not in ("relu", "gated-gelu"):
            raise _unsupported(mt, f"feed_forward_proj={c.feed_forward_proj!r}; lmforge T5 has relu and gated-gelu")
        # transformers 5 keeps the v1.0 output rescale in `scale_decoder_outputs`; 4.x in the tie flag.
        scaled = getattr(c, "scale_decoder_outputs", c.tie_word_embeddings)
        if scaled and not torch.equal(hf.lm_head.weight, hf.shared.weight):
            raise _unsupported(mt, "rescaled decoder outputs with an untied lm_head")
        pad = c.pad_token_id if c.pad_token_id is not None else 0
        start = getattr(c, "decoder_start_token_id", None)  # T5 starts decoding with the pad token
        return T5(
            vocab_size=c.vocab_size,
            d_model=c.d_model,
            d_kv=c.d_kv,
            d_ff=c.d_ff,
            n_layer=c.num_layers,
            n_decoder_layer=c.num_decoder_layers,
            n_head=c.num_heads,
            relative_attention_num_buckets=c.relative_attention_num_buckets,
            relative_attention_max_distance=c.relative_attention_max_distance,
            dropout=c.dropout_rate,
            layer_norm_eps=c.layer_norm_epsilon,
            feed_forward=c.feed_forward_proj,
            tie_word_embeddings=bool(scaled),
            pad_token_id=pad,
            decoder_start_token_id=pad if start is None else start,
            max_seq_len=getattr(c, "n_positions", 512),
        )
    raise TypeError(f"no lmforge family for model_type={mt!r}; supported: {sorted(HF_CLASSES)}")


def from_hf(hf_model) -> nn.Module:
    """An lmforge net (fp32, CPU) with the weights of a GPT2LMHeadModel, BertForMaskedLM or
    T5ForConditionalGeneration."""
    mt = getattr(getattr(hf_model, "config", None), "model_type", None)
    if mt not in HF_CLASSES or type(hf_model).__name__ != HF_CLASSES[mt]:
        raise TypeError(f"from_hf takes one of {sorted(HF_CLASSES.values())}, got {type(hf_model).__name__}")
    net = _net_from_hf_config(hf_model)
    _copy(hf_model, net, _pairs(net), to_hf=False)
    return net


# ---------------------------------------------------------------- folders

# Special-token strings recognised in a tokenizer.json, by role (first match wins).
SPECIAL_TOKENS = {
    "pad_token": ["[PAD]", "<pad>", "<|pad|>"],
    "unk_token": ["[UNK]", "<unk>", "<|unk|>"],
    "mask_token": ["[MASK]", "<mask>", "<|mask|>"],
    "cls_token": ["[CLS]", "<cls>"],
    "sep_token": ["[SEP]", "<sep>"],
    "bos_token": ["<s>", "<bos>", "<|bos|>", "[BOS]", "<|endoftext|>"],
    "eos_token": ["</s>", "<eos>", "<|eos|>", "[EOS]", "<|endoftext|>"],
}


def hf_tokenizer(
    tokenizer_json: str | Path, special_tokens: dict[str, str] | None = None, model_max_length: int | None = None
):
    """A PreTrainedTokenizerFast over a `tokenizers` tokenizer.json. Special-token roles are
    recognised from its added tokens (see SPECIAL_TOKENS); `special_tokens` overrides them."""
    tf = _transformers()
    path = Path(tokenizer_json)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizers tokenizer.json")
    added = {t["content"] for t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])}
    roles = {
        role: next(s for s in cands if s in added)
        for role, cands in SPECIAL_TOKENS.items()
        if any(s in added for s in cands)
    }
    roles.update(special_tokens or {})
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return tf.PreTrainedTokenizerFast(tokenizer_file=str(path), **roles, **extra)


def save_hf_folder(
    net: nn.Module, tokenizer_json: str | Path | None, out_dir: str | Path, special_tokens: dict[str, str] | None = None
) -> Path:
    """Write a Hugging Face folder (config.json + model.safetensors, and with a tokenizer.json the
    tokenizer files) that `transformers.AutoModelFor*.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)` load."""
    hf = to_hf(net)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is not None:
        tok = hf_tokenizer(tokenizer_json, special_tokens, model_max_length=_unwrap(net).max_seq_len)
        if len(tok) > hf.config.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer_json} has {len(tok)} tokens but the model's vocabulary has "
                f"{hf.config.vocab_size} (model.net.vocab_size); they must come from the same run"
            )
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
        if isinstance(_unwrap(net), GPT):  # BERT and T5 carry their pad id in the net config
            ids["pad_token_id"] = tok.pad_token_id
        elif tok.pad_token_id is not None and tok.pad_token_id != hf.config.pad_token_id:
            warnings.warn(
                f"tokenizer pad id {tok.pad_token_id} differs from model.net.pad_token_id={hf.config.pad_token_id}",
                stacklevel=2,
            )
        for k, v in ids.items():
            if v is not None:
                setattr(hf.config, k, v)
                if getattr(hf, "generation_config", None) is not None:
                    setattr(hf.generation_config, k, v)
        tok.save_pretrained(out)
    hf.save_pretrained(out)  # safetensors by default
    return out


def load_hf_folder(path: str | Path) -> nn.Module:
    """An lmforge net from a local Hugging Face checkpoint folder (GPT-2, BERT-MLM or T5)."""
    tf = _transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
    mt = tf.AutoConfig.from_pretrained(path, local_files_only=True).model_type
    if mt not in HF_CLASSES:
        raise ValueError(f"{path}: model_type={mt!r} has no lmforge family; supported: {sorted(HF_CLASSES)}")
    hf, info = getattr(tf, HF_CLASSES[mt]).from_pretrained(path, local_files_only=True, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(
            f"{path}: checkpoint lacks weights the {HF_CLASSES[mt]} head needs: {sorted(info['missing_keys'])}"
        )
    return from_hf(hf.float())
