"""BERT with the NSP/SOP pair head <-> Hugging Face BertForPreTraining: both heads' logits equal in transformers
(fp32, 1e-5), both directions and through a saved folder; a plain BERT still maps onto BertForMaskedLM."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub, even by accident

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.models.bert import BERT  # noqa: E402
from lmforge.models.hf import from_hf, load_hf_folder, save_hf_folder, to_hf  # noqa: E402

V, TOL = 40, 1e-5


def net(pair_head: bool = True) -> BERT:
    torch.manual_seed(0)
    out = BERT(vocab_size=V, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=24, pair_head=pair_head)
    with torch.no_grad():  # every weight off its init (zero biases, unit norms), so each one matters
        for p in out.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return out.eval()


def inputs():
    x = torch.randint(1, V, (3, 11))
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    types = (torch.arange(11) >= 5).long().expand(3, -1)
    return x, mask, types


def diffs(ours: BERT, hf) -> tuple[float, float]:
    x, mask, types = inputs()
    with torch.no_grad():
        mlm, pair = ours.pretraining_logits(x, mask, types)
        out = hf(input_ids=x, attention_mask=mask, token_type_ids=types)
    return (mlm - out.prediction_logits).abs().max().item(), (pair - out.seq_relationship_logits).abs().max().item()


def test_export_to_bert_for_pretraining_has_both_heads_equal():
    ours = net()
    hf = to_hf(ours)
    assert type(hf).__name__ == "BertForPreTraining"
    mlm, pair = diffs(ours, hf)
    assert mlm <= TOL and pair <= TOL, (mlm, pair)
    with torch.no_grad():  # live: the pair head's weights are compared, not just its shape
        hf.cls.seq_relationship.bias.add_(0.5)
    assert diffs(ours, hf)[1] > 0.4


def test_bert_for_pretraining_imports_and_round_trips_exactly():
    torch.manual_seed(1)
    cfg = transformers.BertConfig(
        vocab_size=V,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
    )
    hf = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = from_hf(hf).eval()
    assert ours.config.pair_head
    assert max(diffs(ours, hf)) <= TOL
    back = from_hf(to_hf(ours))
    assert back.config == ours.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_saved_folder_loads_in_transformers_and_back_with_the_pair_head(tmp_path):
    ours = net()
    save_hf_folder(ours, None, tmp_path / "hf")
    loaded = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(loaded).__name__ == "BertForPreTraining"
    assert max(diffs(ours, loaded)) <= TOL
    again = load_hf_folder(tmp_path / "hf").eval()
    assert again.config.pair_head and max(diffs(again, loaded)) <= TOL


def test_plain_bert_is_unchanged():
    plain = net(pair_head=False)
    assert not any(k.startswith(("pooler", "pair_cls")) for k in plain.state_dict())
    hf = to_hf(plain)
    assert type(hf).__name__ == "BertForMaskedLM"
    with pytest.raises(ValueError, match="pair_head=True"):
        plain.pretraining_logits(*inputs())
