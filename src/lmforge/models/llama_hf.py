"""Llama <-> Hugging Face LlamaForCausalLM: the key table and the config translation. Both use RoPE's rotate-half
layout (see models/llama.py), so q_proj and k_proj copy as they are; no weight is permuted or transposed.

Only the Llama architecture itself converts: position=rope, norm=rmsnorm, mlp=swiglu. An HF Llama with what lmforge's
family lacks (rope scaling, biases, another activation or head_dim) is refused with the setting named.
"""

from __future__ import annotations

from typing import Any

from lmforge.models.heads import LlamaClassifier
from lmforge.models.hf import HFAdapter, Pairs, import_transformers, unsupported
from lmforge.models.llama import Llama

HF_ARCHITECTURE = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}


class LlamaAdapter(HFAdapter):
    hf_class = "LlamaForCausalLM"
    pad_token_from_tokenizer = True  # as GPT: the net's config has no pad id of its own

    def key_pairs(self, net: Llama) -> Pairs:
        pairs = [
            ("wte.weight", "model.embed_tokens.weight", False),
            ("norm_f.weight", "model.norm.weight", False),
            ("lm_head.weight", "lm_head.weight", False),
        ]
        for i in range(net.config.n_layer):
            a, b = f"blocks.{i}.", f"model.layers.{i}."
            for ours, theirs in [
                ("norm_1", "input_layernorm"),
                ("attn.q", "self_attn.q_proj"),
                ("attn.k", "self_attn.k_proj"),
                ("attn.v", "self_attn.v_proj"),
                ("attn.o", "self_attn.o_proj"),
                ("norm_2", "post_attention_layernorm"),
                ("mlp.gate", "mlp.gate_proj"),
                ("mlp.up", "mlp.up_proj"),
                ("mlp.down", "mlp.down_proj"),
            ]:
                pairs.append((a + ours + ".weight", b + theirs + ".weight", False))
        return pairs

    def to_hf_config(self, net: Llama) -> Any:
        c = net.config
        if other := {k: getattr(c, k) for k, v in HF_ARCHITECTURE.items() if getattr(c, k) != v}:
            raise ValueError(
                "a Hugging Face LlamaForCausalLM has rotary positions, RMSNorm and a SwiGLU MLP; this net has "
                + ", ".join(f"model.net.{k}={v}" for k, v in other.items())
                + ", so it has no Hugging Face export (it needs "
                + ", ".join(f"{k}={v}" for k, v in HF_ARCHITECTURE.items())
                + ")"
            )
        return import_transformers().LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head,
            num_key_value_heads=c.n_kv_head,
            head_dim=c.head_dim,
            hidden_act="silu",
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_theta)},
            attention_bias=False,
            mlp_bias=False,
            attention_dropout=c.dropout,
            tie_word_embeddings=c.tie_word_embeddings,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )

    def from_hf_config(self, hf_model: Any) -> Llama:
        c, mt = hf_model.config, hf_model.config.model_type
        rope = dict(getattr(c, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise unsupported(mt, f"rope_parameters.rope_type={rope['rope_type']!r} (lmforge Llama has plain RoPE)")
        if c.hidden_act != "silu":
            raise unsupported(mt, f"hidden_act={c.hidden_act!r} (lmforge Llama's SwiGLU uses silu)")
        if c.attention_bias or c.mlp_bias:
            raise unsupported(mt, "attention_bias or mlp_bias (lmforge Llama has no biases)")
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        if head_dim * c.num_attention_heads != c.hidden_size:
            raise unsupported(mt, f"head_dim={head_dim} * num_attention_heads != hidden_size={c.hidden_size}")
        if getattr(c, "pretraining_tp", 1) not in (None, 1):
            raise unsupported(mt, f"pretraining_tp={c.pretraining_tp} (a tensor-parallel reference, not a layout)")
        return Llama(
            vocab_size=c.vocab_size,
            max_seq_len=c.max_position_embeddings,
            n_layer=c.num_hidden_layers,
            n_head=c.num_attention_heads,
            n_kv_head=c.num_key_value_heads or c.num_attention_heads,
            d_model=c.hidden_size,
            d_ff=c.intermediate_size,
            rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
            norm_eps=c.rms_norm_eps,
            tie_word_embeddings=bool(c.tie_word_embeddings),
            dropout=float(c.attention_dropout or 0.0),
        )


ADAPTER = LlamaAdapter()


class LlamaClassifierAdapter(HFAdapter):
    """LlamaClassifier (models/heads.py) -> LlamaForSequenceClassification: the decoder's keys under `backbone.`, the
    bias-free `score`; HF reads the last token that is not the pad id, as for GPT-2. Export only."""

    hf_class = "LlamaForSequenceClassification"
    pad_token_from_tokenizer = True

    def key_pairs(self, net: LlamaClassifier) -> Pairs:
        decoder = [(f"backbone.{o}", t, tr) for o, t, tr in ADAPTER.key_pairs(net.backbone) if t != "lm_head.weight"]
        return [*decoder, ("score.weight", "score.weight", False)]

    def to_hf_config(self, net: LlamaClassifier) -> Any:
        config = ADAPTER.to_hf_config(net.backbone)
        config.num_labels = net.num_labels
        config.tie_word_embeddings = False  # no output embedding to tie: the head is `score`
        config.problem_type = "single_label_classification"
        return config

    def from_hf_config(self, hf_model: Any) -> LlamaClassifier:
        raise unsupported(hf_model.config.model_type, "a sequence classifier is exported, not imported")


CLASSIFIER_ADAPTER = LlamaClassifierAdapter()
