"""Decoding, on nets (the plain nn.Modules of lmforge.models), batched, with the KV cache:

  sample       continue token ids with a decoder-only net: temperature, top-k, top-p (temperature 0: greedy)
  sample_after_prefix  the same for a prefix LM: the prompt read bidirectionally, the continuation causal
  greedy       target ids from an encoder-decoder net, the most likely token at each step
  beam_search  the same with `num_beams` hypotheses per row, as Hugging Face's `generate(early_stopping=True)`
  fill_mask    an encoder's most likely token at every position

Every call runs inside `decoding(net)`: the whole weights gathered once under FSDP, eager execution, eval mode
(restored afterwards, also on an error) and `torch.inference_mode()`. The objectives' `generate`/`sample_texts`
are thin wrappers over these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.masks import decoder_mask
from lmforge.parallel.fsdp import full_weights
from lmforge.protocols import CausalNet, EncoderDecoderNet


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; afterwards every submodule is back in its own train/eval mode,
    also when the body raises."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def decoding(net: nn.Module) -> Iterator[None]:
    """What every decoding call runs under. The one owner of FSDP's `full_weights` for generation: gathered once
    (a collective, entered by all ranks together, outside inference mode as gloo needs), then each rank decodes its
    own batch with no collective per step, stopping when its rows are done. Eager: with compile=true the growing KV
    cache would otherwise recompile every block at each new length."""
    with full_weights(net), torch.compiler.set_stance("force_eager"), eval_mode(net), torch.inference_mode():
        yield


# ------------------------------------------------------------------ decoder-only nets


def sample(
    net: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop_ids: Sequence[int] | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """`input_ids` (batch, time) continued by up to `max_new_tokens` tokens, stopping at the net's context.
    temperature 0 is greedy; top_k keeps the k most likely tokens, top_p the fewest whose probability reaches
    top_p (nucleus sampling; None or 1.0: all), applied in that order as Hugging Face does.

    `stop_ids` (e.g. eos): decoding ends once every row has produced one of them (a row that stopped early goes
    on producing tokens until all have: callers cut each row at its first stop token). `on_token` is called with
    each new column of tokens (batch, 1) as it is produced: streaming to a terminal."""
    if not isinstance(net, CausalNet):
        raise TypeError(f"generation.sample needs a decoder-only net (protocols.CausalNet), not {type(net).__name__}")
    return _continue(
        net, input_ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache, False, stop_ids, on_token
    )


def sample_after_prefix(
    net: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop_ids: Sequence[int] | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """As `sample`, for a prefix LM (lmforge.objectives.prefix_lm): `input_ids` (batch, time >= 1) are read as the
    prefix, every prompt token seeing every other, and continued causally. With the cache, the first call encodes the
    prompt under its bidirectional mask and keeps its keys and values; each new token then attends to all of them
    and to the tokens before it, which is the prefix-LM mask's row for it (so the cached and the recomputed
    continuations agree)."""
    if not isinstance(net, CausalNet):
        raise TypeError(f"sample_after_prefix needs a decoder-only net (protocols.CausalNet), not {type(net).__name__}")
    if input_ids.size(1) < 1:
        raise ValueError("sample_after_prefix needs a prefix of at least one token")
    return _continue(
        net, input_ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache, True, stop_ids, on_token
    )


def _continue(
    net: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    use_cache: bool,
    prefix: bool,
    stop_ids: Sequence[int] | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The decoding loop of `sample` and `sample_after_prefix`; with `prefix`, the prompt is read under the
    prefix-LM mask (by the first cached call, or by every recomputation)."""
    check_top_p(top_p)
    b, n_prompt = input_ids.shape
    prefix_len = torch.full((b,), n_prompt, device=input_ids.device) if prefix else None

    def mask(length: int) -> dict[str, Any]:
        return {"attn_mask": decoder_mask(length, input_ids.device, prefix_len=prefix_len)} if prefix else {}

    max_new_tokens = min(max_new_tokens, cast(CausalNet, net).max_seq_len - n_prompt)
    stops = torch.tensor(list(stop_ids), device=input_ids.device) if stop_ids else None
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    with decoding(net):
        out, cache, step_input = input_ids, None, input_ids
        for _ in range(max(0, max_new_tokens)):
            if use_cache:
                first = mask(n_prompt) if cache is None else {}  # later tokens see everything cached
                logits, cache = net(step_input, past_key_values=cache, use_cache=True, **first)
            else:
                logits = net(out, **mask(out.size(1)))
            step_input = sample_next(logits[:, -1].float(), temperature, top_k, top_p, generator)
            out = torch.cat([out, step_input], dim=1)
            if on_token is not None:
                on_token(step_input)
            if stops is not None:  # one host read per step, only when asked to stop
                done |= torch.isin(step_input[:, 0], stops)
                if bool(done.all()):
                    break
    return out.clone()  # cloned outside inference mode: an ordinary tensor, usable anywhere (e.g. in autograd)


def check_top_p(top_p: float | None) -> None:
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1 or None: no nucleus filtering)")


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row (batch, 1) from the last-position logits (batch, vocab)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = keep_top_p(keep_top_k(logits / temperature, top_k), top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


def keep_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Logits with all but the `top_k` largest of each row at -inf (ties with the k-th stay); None or 0: all."""
    if not top_k:
        return logits
    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Logits with the least likely tokens at -inf, keeping the fewest whose probabilities sum to at least `top_p`
    (always the most likely one). As Hugging Face's TopPLogitsWarper: from the least likely up, tokens whose
    cumulative probability stays within 1 - top_p go."""
    if top_p is None or top_p >= 1:
        return logits
    ascending, order = torch.sort(logits, dim=-1)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    drop[:, -1] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


# ------------------------------------------------------------------ encoder-decoder nets


def greedy(
    net: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Target ids (batch, <= max_new_tokens), without the start token: the most likely token at each step. Rows
    end with `eos_id` (unless cut by the length) and are padded after it; decoding stops when every row is done."""
    if not isinstance(net, EncoderDecoderNet):
        raise TypeError(f"generation.greedy needs an encoder-decoder net (EncoderDecoderNet), not {type(net).__name__}")
    c = net.config
    with decoding(net):
        enc = net.encode(input_ids, attention_mask)
        seqs = torch.full((enc.size(0), 1), c.decoder_start_token_id, dtype=torch.long, device=enc.device)
        done = torch.zeros(enc.size(0), dtype=torch.bool, device=enc.device)
        cache = None
        for _ in range(_max_new(net, max_new_tokens)):
            logits, cache = _next_logits(net, seqs, enc, attention_mask, cache, use_cache)
            nxt = logits.argmax(dim=-1).masked_fill(done, c.pad_token_id)
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            if eos_id is not None:
                done |= nxt == eos_id
                if done.all():
                    break
        out = seqs[:, 1:]
    return _at_least_one_token(out, c.pad_token_id)


def beam_search(
    net: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Target ids as `greedy`, by beam search with Hugging Face's semantics for `early_stopping=True`:

    - each step, every row's `num_beams` beams are extended by the 2 * num_beams best (beam, token) candidates by
      summed log-probability; an eos among the first num_beams finishes a hypothesis, scored by its summed
      log-probs / length ** length_penalty (an eos further down finishes nothing); the first num_beams candidates
      that are not eos are the next beams;
    - a row is done once it has num_beams finished hypotheses; its best one is the answer;
    - rows cut by the length let their live beams (scored the same way) compete with the finished ones.
    Ties go to the hypothesis found first. All rows advance together, as tensors; the only host read per step is
    whether every row is done.
    """
    if not isinstance(net, EncoderDecoderNet):
        raise TypeError(f"beam_search needs an encoder-decoder net (EncoderDecoderNet), not {type(net).__name__}")
    c = net.config
    k, pad = num_beams, c.pad_token_id
    with decoding(net):
        enc = net.encode(input_ids, attention_mask).repeat_interleave(k, dim=0)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(k, dim=0)
        b, dev = input_ids.size(0), enc.device
        max_new = _max_new(net, max_new_tokens)
        rows = torch.arange(b, device=dev)
        ranks = torch.arange(2 * k, device=dev)
        same_rows = torch.arange(b * k, device=dev).view(b, k)
        scores = torch.full((b, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        seqs = torch.full((b * k, 1), c.decoder_start_token_id, dtype=torch.long, device=dev)
        # Per row: how many hypotheses finished, and the best of them (all the answer needs). Scores in float64,
        # as Python floats: the same rounding as the reference implementation, so the same hypotheses tie.
        n_finished = torch.zeros(b, dtype=torch.long, device=dev)
        has_best = torch.zeros(b, dtype=torch.bool, device=dev)
        best_score = torch.full((b,), float("-inf"), dtype=torch.float64, device=dev)
        best_seq = torch.full((b, max_new), pad, dtype=torch.long, device=dev)
        best_len = torch.zeros(b, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        cache = None
        for step in range(max_new):
            logits, cache = _next_logits(net, seqs, enc, mask, cache, use_cache)
            logp = torch.log_softmax(logits, dim=-1)
            vocab = logp.size(-1)
            cand = (scores.reshape(-1, 1) + logp).view(b, k * vocab)
            top_scores, top_idx = cand.topk(2 * k, dim=1)  # 2k: room for k live beams after eos candidates
            beam, token = top_idx // vocab, top_idx % vocab
            is_eos = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)

            # Finished hypotheses: eos in the top k of a row still searching.
            finishing = is_eos & (ranks < k) & ~done[:, None]
            n_finished += finishing.sum(dim=1)
            normed = (top_scores.double() / (step + 1) ** length_penalty).masked_fill(~finishing, float("-inf"))
            step_best = normed.max(dim=1).values
            first = (finishing & (normed == step_best[:, None])).int().argmax(dim=1)  # the first of equals
            better = finishing.any(dim=1) & (~has_best | (step_best > best_score))
            hyp = torch.full_like(best_seq, pad)
            hyp[:, :step] = seqs.view(b, k, -1)[rows, beam[rows, first], 1:]
            hyp[:, step] = token[rows, first]
            best_seq = torch.where(better[:, None], hyp, best_seq)
            best_score = torch.where(better, step_best, best_score)
            best_len = torch.where(better, step + 1, best_len)
            has_best |= better

            # The next beams: the first k candidates that are not eos, in score order; done rows stand still.
            live = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]
            next_scores = top_scores.gather(1, live).masked_fill(done[:, None], 0.0)
            next_rows = torch.where(done[:, None], same_rows, k * rows[:, None] + beam.gather(1, live))
            next_tokens = token.gather(1, live).masked_fill(done[:, None], pad)
            done |= n_finished >= k
            if done.all():
                break
            order = next_rows.view(-1)
            seqs = torch.cat([seqs[order], next_tokens.view(-1, 1)], dim=1)
            if cache is not None:
                cache = net.reorder_cache(cache, order)
            scores = next_scores

        # Rows cut by the length: the best live beam wins if it beats the best finished hypothesis.
        n = seqs.size(1) - 1
        live_scores = scores.double() / max(n, 1) ** length_penalty
        live_best = live_scores.max(dim=1).values
        first_live = (live_scores == live_best[:, None]).int().argmax(dim=1)
        use_live = ~done & (~has_best | (live_best > best_score))
        width = int(torch.where(use_live, n, best_len).max()) if b else 0
        live_seq = F.pad(seqs.view(b, k, -1)[rows, first_live, 1:], (0, max(0, width - n)), value=pad)[:, :width]
        out = torch.where(use_live[:, None], live_seq, best_seq[:, :width])
    return _at_least_one_token(out, pad)


def _max_new(net: EncoderDecoderNet, max_new_tokens: int) -> int:
    return min(max_new_tokens, net.max_seq_len - 1)  # the start token takes one decoder position


def _next_logits(
    net: EncoderDecoderNet,
    seqs: torch.Tensor,
    enc: torch.Tensor,
    mask: torch.Tensor | None,
    cache: Any,
    use_cache: bool,
) -> tuple[torch.Tensor, Any]:
    """Last-position logits (batch, vocab) for `seqs` (batch, time): with the cache only the newest token is fed."""
    if not use_cache:
        return net.decode(seqs, enc, mask)[:, -1].float(), None
    logits, cache = net.decode(seqs[:, -1:], enc, mask, past_key_values=cache, use_cache=True)
    return logits[:, -1].float(), cache


def _at_least_one_token(out: torch.Tensor, pad_id: int) -> torch.Tensor:
    """`out` cloned outside inference mode (an ordinary tensor, usable anywhere); a row of one pad if empty."""
    return out.clone() if out.size(1) else out.new_full((out.size(0), 1), pad_id)


# ------------------------------------------------------------------ encoders


def fill_mask(net: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The net's most likely token (batch, time) at every position of `input_ids`."""
    with decoding(net):
        out = net(input_ids, attention_mask).argmax(dim=-1)
    return out.clone()
