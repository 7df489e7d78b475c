"""Generate text with a finished run, streaming tokens to the terminal as they are produced:

    python -m lmforge.generate <run dir | checkpoint> --prompt "..." [--max-new-tokens N] [--temperature T]
                               [--top-k K] [--top-p P] [--seed S]

A run folder means its checkpoints/best.ckpt (else last.ckpt); a checkpoint is a .ckpt file or the folder
trainer=fsdp writes. The tokenizer is the run folder's tokenizer.json. An SFT run (model=gpt_sft, llama_sft) is given
the prompt in its chat template (the run's data.template) and answers until eos; a causal LM run (model=gpt, llama)
continues the prompt as a fresh document, a prefix LM run reads it as its prefix; either stops at eos or after
--max-new-tokens. Decoding is lmforge.generation's (temperature 0: greedy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

import torch

from lmforge import generation
from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError, LmforgeError

DECODERS = {"clm": generation.sample, "sft": generation.sample, "prefix_lm": generation.sample_after_prefix}


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a path names: itself (a .ckpt file, a sharded folder) or a run folder's best/last."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(
            f"{str(p)!r}: no such run folder or checkpoint. Give <run dir> or <run dir>/checkpoints/*.ckpt."
        )
    if p.is_dir() and (p / "checkpoints").is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).exists():
                return p / "checkpoints" / name
        raise ConfigError(f"{str(p)!r} is a run folder without checkpoints/best.ckpt or last.ckpt (callbacks=none?).")
    if p.is_dir() and not (p / ".metadata").is_file():
        raise ConfigError(f"{str(p)!r} is neither a run folder (no checkpoints/) nor a sharded checkpoint.")
    return p


def tokenizer_of(ckpt_path: Path):
    from tokenizers import Tokenizer

    for folder in (ckpt_path.parent, ckpt_path.parent.parent, ckpt_path.parent.parent.parent):
        if (folder / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
    raise ConfigError(f"no tokenizer.json in the run folder of {ckpt_path}; generate needs the run's tokenizer.")


def prompt_ids(prompt: str, objective: str, config: dict[str, Any], tokenizer, eos_id: int) -> list[int]:
    """What the net is given: an SFT run's chat template around the prompt; [eos] + prompt for the others (the
    start of a fresh document, as the run's samples)."""
    if objective == "sft":
        from lmforge.data.instructions import check_template, render_prompt

        text = render_prompt(prompt, check_template((config.get("data") or {}).get("template")))
        return tokenizer.encode(text, add_special_tokens=False).ids
    return [eos_id] + (tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else [])


def generate(
    path: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
    out=sys.stdout,
) -> str:
    """Stream the run's continuation of `prompt` to `out`; return it."""
    from lmforge.export import net_from_checkpoint, objective_class

    ckpt_path = checkpoint_of(path)
    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt["lmforge"]
    objective = meta.get("objective")
    if objective not in DECODERS:
        raise ConfigError(
            f"{ckpt_path} is a {objective} run; generate continues decoder runs ({', '.join(DECODERS)}). "
            "Fill-mask and seq2seq generation are not implemented here."
        )
    if max_new_tokens < 1 or temperature < 0:
        raise ConfigError(f"--max-new-tokens={max_new_tokens} must be >= 1 and --temperature={temperature} >= 0.")
    try:
        generation.check_top_p(top_p)
    except ValueError as e:
        raise ConfigError(f"--{e}") from None
    tokenizer = tokenizer_of(ckpt_path)
    config = meta.get("config") or {}
    eos_token = getattr(objective_class(ckpt), "special_tokens", {}).get("eos", "<|endoftext|>")
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise ConfigError(f"the tokenizer of {ckpt_path} has no {eos_token} token: not this run's tokenizer.")
    net = net_from_checkpoint(ckpt)
    context = int(cast(Any, net).max_seq_len)
    ids = prompt_ids(prompt, objective, config, tokenizer, eos_id)
    if len(ids) >= context:
        raise ConfigError(
            f"the prompt is {len(ids)} tokens, the model's context is {context}: no room to generate. "
            "Shorten the prompt."
        )
    produced: list[int] = []
    shown = ""

    def stream(column: torch.Tensor) -> None:
        nonlocal shown
        token = int(column[0, 0])
        if token == eos_id:  # the last token: decoding stops at it (stop_ids), and it is not shown
            return
        produced.append(token)
        text = tokenizer.decode(produced)  # the whole text each time: a byte-level token may finish a character
        if not text.endswith("\ufffd"):
            out.write(text[len(shown) :])
            out.flush()
            shown = text

    gen = torch.Generator().manual_seed(seed)
    DECODERS[objective](
        net,
        torch.tensor([ids]),
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        gen,
        stop_ids=[eos_id],
        on_token=stream,
    )
    final = tokenizer.decode(produced)
    out.write(final[len(shown) :] + "\n")
    out.flush()
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (its checkpoints/best.ckpt) or a checkpoint (.ckpt, FSDP folder)")
    parser.add_argument("--prompt", default="", help="the text to answer (SFT) or continue (CLM)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: no top-k filtering")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: off)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        generate(
            args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.top_p, args.seed
        )
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
