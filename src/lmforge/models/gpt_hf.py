"""GPT <-> Hugging Face GPT2LMHeadModel: the key table, the config translation and GPT's special cases (HF GPT-2
always has biases: a bias=False net exports zeros; the exported config takes the tokenizer's pad id)."""

from __future__ import annotations

import torch

from lmforge.models.gpt import GPT
from lmforge.models.heads import GPTClassifier
from lmforge.models.hf import HFAdapter, Pairs, import_transformers, unsupported


class GPTAdapter(HFAdapter):
    hf_class = "GPT2LMHeadModel"
    pad_token_from_tokenizer = True  # GPT's config has no pad id of its own

    def key_pairs(self, net: GPT) -> Pairs:
        # HF GPT-2 uses Conv1D, whose weight is (in, out): transpose the Linear weights.
        pairs = [
            ("wte.weight", "transformer.wte.weight", False),
            ("wpe.weight", "transformer.wpe.weight", False),
            ("lm_head.weight", "lm_head.weight", False),
        ]
        for i in range(net.config.n_layer):
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

    def to_hf_config(self, net: GPT):
        c = net.config
        return import_transformers().GPT2Config(
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
            tie_word_embeddings=c.tie_word_embeddings,
        )

    def prepare_hf_model(self, net: GPT, hf_model) -> set[str]:
        if net.config.bias:
            return set()
        return {t for _, t, _ in self.key_pairs(net) if t.endswith(".bias")}  # HF GPT-2 always has biases

    def from_hf_config(self, hf_model) -> GPT:
        c, mt = hf_model.config, hf_model.config.model_type
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise unsupported(mt, f"activation_function={c.activation_function!r} (lmforge GPT uses tanh GELU)")
        if c.scale_attn_by_inverse_layer_idx or not c.scale_attn_weights or getattr(c, "add_cross_attention", False):
            raise unsupported(mt, "non-standard attention scaling or cross-attention")
        n_inner = c.n_inner or 4 * c.n_embd
        if n_inner % c.n_embd:
            raise unsupported(mt, f"n_inner={n_inner} is not a multiple of n_embd={c.n_embd}")
        if hf_model.lm_head.weight is not hf_model.transformer.wte.weight and not torch.equal(
            hf_model.lm_head.weight, hf_model.transformer.wte.weight
        ):
            raise unsupported(mt, "untied lm_head (lmforge GPT ties input and output embeddings)")
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


ADAPTER = GPTAdapter()


class GPTClassifierAdapter(HFAdapter):
    """GPTClassifier (models/heads.py) -> GPT2ForSequenceClassification: the decoder's keys under `backbone.`, the
    bias-free `score`. HF reads the last token that is not the config's pad id (the tokenizer's <|pad|>), which is the
    classifier's last real token. Export only."""

    hf_class = "GPT2ForSequenceClassification"
    pad_token_from_tokenizer = True

    def key_pairs(self, net: GPTClassifier) -> Pairs:
        decoder = [(f"backbone.{o}", t, tr) for o, t, tr in ADAPTER.key_pairs(net.backbone) if t != "lm_head.weight"]
        return [*decoder, ("score.weight", "score.weight", False)]

    def to_hf_config(self, net: GPTClassifier):
        config = ADAPTER.to_hf_config(net.backbone)
        config.num_labels = net.num_labels
        config.summary_first_dropout = net.drop.p
        config.problem_type = "single_label_classification"
        return config

    def prepare_hf_model(self, net: GPTClassifier, hf_model) -> set[str]:
        if net.config.bias:
            return set()
        return {t for _, t, _ in self.key_pairs(net) if t.endswith(".bias")}  # HF GPT-2 always has biases

    def from_hf_config(self, hf_model) -> GPTClassifier:
        raise unsupported(hf_model.config.model_type, "a sequence classifier is exported, not imported")


CLASSIFIER_ADAPTER = GPTClassifierAdapter()
