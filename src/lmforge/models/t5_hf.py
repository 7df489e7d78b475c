"""T5 <-> Hugging Face T5ForConditionalGeneration: the key table, the config translation and T5's special case
(an untied v1.1 output layer, which transformers 5 would tie)."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.hf import HFAdapter, Pairs, import_transformers, unsupported
from lmforge.models.t5 import T5


class T5Adapter(HFAdapter):
    hf_class = "T5ForConditionalGeneration"

    def key_pairs(self, net: T5) -> Pairs:
        c = net.config
        pairs = [
            ("shared.weight", k, False)
            for k in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
        ]
        pairs.append(("lm_head.weight", "lm_head.weight", False))
        gated = c.feed_forward == "gated-gelu"
        mlp = [("fc", "wi_0"), ("fc_linear", "wi_1"), ("proj", "wo")] if gated else [("fc", "wi"), ("proj", "wo")]
        for stack, n in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
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

    def to_hf_config(self, net: T5):
        c = net.config
        return import_transformers().T5Config(
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

    def prepare_hf_model(self, net: T5, hf_model) -> set[str]:
        if not net.config.tie_word_embeddings:
            # transformers 5 always ties T5's lm_head (the flag only switches the output rescale);
            # a v1.1 net has its own output layer, so give the HF model one too. Saved with both
            # tensors, it loads untied again. `tie_word_embeddings=False` in config.json keeps
            # transformers 4.x (which reads the flag literally) right as well.
            hf_model.lm_head.weight = nn.Parameter(hf_model.lm_head.weight.detach().clone())
            hf_model.config.tie_word_embeddings = False
        return set()

    def from_hf_config(self, hf_model) -> T5:
        c, mt = hf_model.config, hf_model.config.model_type
        if c.feed_forward_proj not in ("relu", "gated-gelu"):
            raise unsupported(mt, f"feed_forward_proj={c.feed_forward_proj!r}; lmforge T5 has relu and gated-gelu")
        # transformers 5 keeps the v1.0 output rescale in `scale_decoder_outputs`; 4.x in the tie flag.
        scaled = getattr(c, "scale_decoder_outputs", c.tie_word_embeddings)
        if scaled and not torch.equal(hf_model.lm_head.weight, hf_model.shared.weight):
            raise unsupported(mt, "rescaled decoder outputs with an untied lm_head")
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


ADAPTER = T5Adapter()
