"""Document masks for packed blocks (data.document_mask): no token attends across an eos, positions restart per
document, for GPT and for Llama with every position kind; the plain causal path is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.models.masks import decoder_inputs, decoder_mask, document_ids, positions_in_documents
from lmforge.models.positions import POSITIONS
from lmforge.objectives.clm import CausalLM, PackedCausalBatches, next_token_loss
from lmforge.objectives.losses import IGNORE_INDEX

V, EOS, T = 61, 0, 40
# document 0 (cut mid-way by the block start) ends at 9, document 1 at 24, document 2 runs to the block's end
EOS_AT = (9, 24)


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():  # off the init (unit norms, zero biases), so every weight matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def gpt() -> GPT:
    torch.manual_seed(0)
    return perturbed(GPT(vocab_size=V, max_seq_len=48, n_layer=2, n_head=4, d_model=32))


def llama(position: str) -> Llama:
    torch.manual_seed(0)
    return perturbed(
        Llama(vocab_size=V, max_seq_len=48, n_layer=2, n_head=4, n_kv_head=2, d_model=32, position=position)
    )


NETS = {"gpt": gpt, **{f"llama-{p}": (lambda p=p: llama(p)) for p in POSITIONS}}


def block(seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(1, V, T)
    ids[list(EOS_AT)] = EOS
    return ids


def masked_batch(*blocks: np.ndarray) -> dict[str, torch.Tensor]:
    return PackedCausalBatches(T, eos_id=EOS).with_document_mask()(list(blocks), np.random.default_rng(0))


def logits(net, batch):
    return net(batch["input_ids"], **decoder_inputs(batch))


def test_document_ids_positions_and_the_ignored_first_targets():
    batch = masked_batch(block())
    docs, pos, labels = batch["document_ids"][0], batch["position_ids"][0], batch["labels"][0]
    assert docs.tolist() == [0] * 10 + [1] * 15 + [2] * 15  # the eos belongs to the document it ends
    assert pos.tolist() == list(range(10)) + list(range(15)) + list(range(15))
    # targets predicted from an eos (the next document's first token) are left out, every other one kept
    assert (labels == IGNORE_INDEX).nonzero().flatten().tolist() == [10, 25]
    assert torch.equal(document_ids(batch["input_ids"], EOS), batch["document_ids"])
    assert torch.equal(positions_in_documents(batch["document_ids"]), batch["position_ids"])


def test_without_the_switch_batches_are_as_before():
    batch = PackedCausalBatches(T, eos_id=EOS)([block()])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert decoder_inputs(batch) == {}


def test_the_mask_is_causal_and_block_diagonal():
    doc = torch.tensor([[0, 0, 1, 1, 1]])
    mask = decoder_mask(5, doc.device, doc_ids=doc)[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("name", list(NETS))
def test_changing_a_token_of_one_document_never_changes_another_documents_logits(name):
    net = NETS[name]()
    base_ids = block()
    base = logits(net, masked_batch(base_ids))
    for doc, (lo, hi), at in ((0, (0, 10), 0), (1, (10, 25), 10), (1, (10, 25), 23)):  # first and last tokens
        ids = base_ids.copy()
        ids[at] = (ids[at] + 7) % V or 1
        out = logits(net, masked_batch(ids))
        others = [i for i in range(T) if not lo <= i < hi]
        assert torch.equal(out[0, others], base[0, others]), f"{name}: a change in document {doc} leaked out"
        assert not torch.allclose(out[0, at:hi], base[0, at:hi], atol=1e-4), "its own document should change"


@pytest.mark.parametrize("name", list(NETS))
def test_positions_restart_a_document_inside_the_block_equals_it_alone(name):
    net = NETS[name]()
    ids = block()
    inside = logits(net, masked_batch(ids))
    for lo, hi in ((10, 25), (25, T)):
        alone = net(torch.from_numpy(ids[lo:hi]).long()[None])
        torch.testing.assert_close(inside[0, lo:hi], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(NETS))
def test_an_explicit_causal_mask_and_index_positions_equal_the_default_path(name):
    """The masked path (SDPA with a boolean mask, per-token positions) computes what the fused causal one does."""
    net = NETS[name]()
    ids = torch.from_numpy(np.stack([block(0), block(1)])).long()
    one_document = torch.zeros_like(ids)
    kwargs = {
        "attn_mask": decoder_mask(T, ids.device, doc_ids=one_document),
        "position_ids": torch.arange(T).expand(2, T),
    }
    torch.testing.assert_close(net(ids, **kwargs), net(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt", "llama-rope", "llama-alibi"])
@torch.no_grad()
def test_the_block_loss_is_the_token_weighted_mean_of_each_documents_own_loss(name):
    net = NETS[name]()
    lm = CausalLM(net=net, optimizer=None)
    ids = block()
    loss, n = lm.loss(masked_batch(ids))
    total, count = 0.0, 0
    for lo, hi in ((0, 10), (10, 25), (25, T)):
        doc = torch.from_numpy(ids[lo:hi]).long()[None]
        doc_loss, doc_n = next_token_loss(net(doc), doc)
        total, count = total + float(doc_loss) * int(doc_n), count + int(doc_n)
    assert int(n) == count == T - 3  # one target per token but the block's first and the two after an eos
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("name", ["gpt", "llama-rope", "llama-alibi", "llama-learned"])
def test_kv_cache_generation_is_unaffected(name):
    lm = CausalLM(net=NETS[name](), optimizer=None)
    prompt = torch.from_numpy(block()[:6]).long()[None].repeat(2, 1)
    cached = lm.generate(prompt, 20, temperature=0.0, use_cache=True)
    assert torch.equal(cached, lm.generate(prompt, 20, temperature=0.0, use_cache=False))


def test_a_mask_with_a_kv_cache_is_refused():
    net = gpt()
    ids = torch.from_numpy(block()[:8]).long()[None]
    _, cache = net(ids, use_cache=True)
    with pytest.raises(ValueError, match="past_key_values"):
        net(ids[:, -1:], past_key_values=cache, attn_mask=torch.ones(1, 1, 1, 9, dtype=torch.bool))
