"""Attention masks for the decoder families beyond the plain causal one, and the per-token positions that go with them:

  document mask  packed blocks hold several documents back to back, each ended by `eos`; a token attends only to
                 earlier tokens of its own document (block-diagonal AND causal), and positions restart at 0 at each
                 document's first token (Megatron-LM's reset_attention_mask + reset_position_ids). The `eos` that
                 ends a document belongs to it: it is the last token its document sees.
  prefix LM      each row's first `prefix_len` tokens attend to each other in both directions; every later token
                 attends causally (to the whole prefix and the suffix up to itself), as in T5's and UniLM's
                 "prefix LM". With a document mask too, both apply: a token sees what each allows.

The batch builders (objectives/clm.py, objectives/prefix_lm.py) emit `document_ids`, `position_ids` and `prefix_len`
per row; `decoder_inputs` turns them into what the nets' forward takes: `position_ids` (batch, time) and `attn_mask`,
one SDPA boolean "may attend" mask (batch, 1, time, time), built once per forward and shared by every layer.

Why a dense SDPA mask and not FlexAttention's block mask: it runs on any device and dtype with no compile, and the
masked kernels it selects (memory-efficient attention on GPU, the math or flash-CPU kernel on CPU) compute the full
(time x time) score matrix either way: the mask changes no matmul count (lmforge.flops counts the same FLOPs, and
FlopCounterMode agrees). Its cost is measured by bench/document_mask.py. Every query sees at least itself, so no row
is fully masked and no NaN comes out of the softmax.
"""

from __future__ import annotations

import torch


def document_ids(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(batch, time) index of each token's document within its row: 0 up to and including the first eos, 1 after it,
    ... (a row starts inside whatever document the block was cut from)."""
    ends = (input_ids == eos_id).long()
    return ends.cumsum(dim=1) - ends  # the number of eos strictly before each token


def positions_in_documents(doc_ids: torch.Tensor) -> torch.Tensor:
    """(batch, time) position of each token within its document: 0 at each document's first token."""
    t = doc_ids.size(1)
    steps = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values  # each document's first index
    return steps - first


def first_tokens_of_later_documents(doc_ids: torch.Tensor) -> torch.Tensor:
    """(batch, time) True at the first token of every document but the row's first: the targets that a document mask
    makes unpredictable (the eos before them is in another document), so the loss leaves them out."""
    starts = torch.zeros_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts


def decoder_mask(
    time: int,
    device: torch.device,
    doc_ids: torch.Tensor | None = None,
    prefix_len: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The boolean "may attend" mask (batch, 1, time, time) for queries and keys at the same `time` positions (no
    KV cache): causal, widened to the whole prefix for `prefix_len` (batch,), narrowed to the query's document for
    `doc_ids` (batch, time). None when neither is given: the plain causal mask, which SDPA applies fastest itself."""
    if doc_ids is None and prefix_len is None:
        return None
    steps = torch.arange(time, device=device)
    allowed = (steps[None, :] <= steps[:, None])[None]  # (1, q, k) causal
    if prefix_len is not None:
        in_prefix = steps[None, :] < prefix_len.to(device)[:, None]  # (batch, k)
        allowed = allowed | in_prefix[:, None, :]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])
    return allowed[:, None]


def decoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of a decoder net's forward beyond `input_ids` for a batch from the CLM or prefix-LM
    builders: `position_ids` and `attn_mask` when the batch carries documents or prefixes, nothing otherwise."""
    ids = batch["input_ids"]
    mask = decoder_mask(ids.size(1), ids.device, batch.get("document_ids"), batch.get("prefix_len"))
    inputs: dict[str, torch.Tensor] = {}
    if mask is not None:
        inputs["attn_mask"] = mask
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    return inputs


def check_mask_without_cache(attn_mask: torch.Tensor | None, past_key_values: object) -> None:
    """A mask is given for queries and keys at the same positions; with a KV cache the new tokens see every cached
    key (prefix-aware decoding encodes the prompt with its mask in the first call, then feeds tokens one by one)."""
    if attn_mask is not None and past_key_values:
        raise ValueError("attn_mask is for a forward without past_key_values (queries and keys the same positions)")
