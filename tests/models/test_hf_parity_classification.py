"""Classifiers -> Hugging Face *ForSequenceClassification: the same logits in transformers on padded batches (fp32,
atol 1e-5), BERT with sentence-pair token types, the decoders reading the last token that is not the pad id."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub, even by accident

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.models.heads import BERTClassifier, GPTClassifier, LlamaClassifier  # noqa: E402
from lmforge.models.hf import to_hf  # noqa: E402

V, PAD = 40, 1
DIMS = {"vocab_size": V, "max_seq_len": 16, "n_layer": 2, "n_head": 2, "d_model": 16}
NETS = {
    "bert": (lambda: BERTClassifier(num_labels=3, d_ff=24, pad_token_id=PAD, **DIMS), "BertForSequenceClassification"),
    "gpt": (lambda: GPTClassifier(num_labels=3, **DIMS), "GPT2ForSequenceClassification"),
    "gpt-nobias": (lambda: GPTClassifier(num_labels=2, bias=False, **DIMS), "GPT2ForSequenceClassification"),
    "llama": (
        lambda: LlamaClassifier(num_labels=4, **{**DIMS, "n_head": 4}, n_kv_head=2, d_ff=24),
        "LlamaForSequenceClassification",
    ),
}


def batch():
    """Two rows, the second right-padded with PAD; token types 0 then 1 (a sentence pair) on the first."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = PAD, 0
    types = torch.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize("name", sorted(NETS))
def test_exported_classifier_gives_the_same_logits(name):
    torch.manual_seed(0)
    make, hf_class = NETS[name]
    net = make().eval()
    with torch.no_grad():  # non-trivial heads (zero-init biases would hide a missed copy)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = to_hf(net)
    assert type(hf).__name__ == hf_class and hf.config.num_labels == net.num_labels
    ids, mask, types = batch()
    with torch.no_grad():
        if name == "bert":
            ours = net(ids, mask, types)
            theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        else:
            hf.config.pad_token_id = PAD  # the export takes it from the tokenizer's <|pad|>
            ours = net(ids, mask)
            theirs = hf(input_ids=ids).logits  # HF finds the last real token from the pad id alone
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
