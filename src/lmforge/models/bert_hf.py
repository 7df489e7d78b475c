"""BERT <-> Hugging Face BertForMaskedLM (or BertForPreTraining, for a net with the NSP/SOP pair head): the key
table and the config translation; BERTClassifier -> BertForSequenceClassification."""

from __future__ import annotations

from lmforge.models.bert import BERT
from lmforge.models.heads import BERTClassifier
from lmforge.models.hf import HFAdapter, Pairs, import_transformers, unsupported


class BERTAdapter(HFAdapter):
    hf_class = "BertForMaskedLM"
    pretraining_class = "BertForPreTraining"  # MLM + the pooler and seq_relationship head (pair_head=True)

    def hf_class_of(self, net: BERT) -> str:
        return self.pretraining_class if net.config.pair_head else self.hf_class

    def hf_class_of_config(self, hf_config) -> str:
        # A folder saved from BertForPreTraining says so in config.json; it loads with its pooler and pair head.
        return self.pretraining_class if self.pretraining_class in (hf_config.architectures or []) else self.hf_class

    def hf_classes(self) -> tuple[str, ...]:
        return (self.hf_class, self.pretraining_class)

    def key_pairs(self, net: BERT) -> Pairs:
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
        for i in range(net.config.n_layer):
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
        if net.config.pair_head:
            names += [("pooler", "bert.pooler.dense"), ("pair_cls", "cls.seq_relationship")]
        return pairs + [(f"{o}.{p}", f"{t}.{p}", False) for o, t in names for p in ("weight", "bias")]

    def to_hf_config(self, net: BERT):
        c = net.config
        return import_transformers().BertConfig(
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

    def from_hf_config(self, hf_model) -> BERT:
        c, mt = hf_model.config, hf_model.config.model_type
        if c.hidden_act != "gelu":
            raise unsupported(mt, f"hidden_act={c.hidden_act!r} (lmforge BERT uses exact GELU)")
        if getattr(c, "position_embedding_type", "absolute") != "absolute" or c.is_decoder:
            raise unsupported(mt, "only absolute positions and an encoder (is_decoder=False) are supported")
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
            pair_head=type(hf_model).__name__ == self.pretraining_class,
        )


ADAPTER = BERTAdapter()


class BERTClassifierAdapter(HFAdapter):
    """BERTClassifier (models/heads.py) -> BertForSequenceClassification: the encoder's keys under `backbone.`, the
    pooler as HF's BertPooler, the classifier as HF's. Export only: init_from reads the pretraining folders."""

    hf_class = "BertForSequenceClassification"

    def key_pairs(self, net: BERTClassifier) -> Pairs:
        encoder = [(f"backbone.{o}", t, tr) for o, t, tr in ADAPTER.key_pairs(net.backbone) if not t.startswith("cls.")]
        head = [("pooler", "bert.pooler.dense"), ("classifier", "classifier")]
        return encoder + [(f"{o}.{p}", f"{t}.{p}", False) for o, t in head for p in ("weight", "bias")]

    def to_hf_config(self, net: BERTClassifier):
        config = ADAPTER.to_hf_config(net.backbone)
        config.num_labels = net.num_labels
        config.classifier_dropout = net.classifier_dropout
        config.problem_type = "single_label_classification"
        return config

    def from_hf_config(self, hf_model) -> BERTClassifier:
        raise unsupported(hf_model.config.model_type, "a sequence classifier is exported, not imported")


CLASSIFIER_ADAPTER = BERTClassifierAdapter()
