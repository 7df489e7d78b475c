"""Export a training checkpoint to a Hugging Face folder:

    python -m lmforge.export <run dir>/checkpoints/best.ckpt <out dir> [--tokenizer tokenizer.json]

The folder (config.json, model.safetensors, tokenizer files) loads with
`transformers.AutoModelForCausalLM / AutoModelForMaskedLM / AutoModelForSeq2SeqLM.from_pretrained(dir)`
(a classifier's with `AutoModelForSequenceClassification`, its labels as `id2label` / `label2id`)
and `AutoTokenizer.from_pretrained(dir)`. The net is rebuilt from what the checkpoint carries
(`checkpoint["lmforge"]`: net class and config, see objectives/base.py); the tokenizer is the run's
`tokenizer.json`, found next to the checkpoint. The exported tokenizer adds the objective's special
tokens on encode, as Hugging Face tokenizers do: `[CLS] text [SEP]` for BERT, `text </s>` for T5.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hydra.utils import get_class
from torch import nn

from lmforge.checkpoints import read_checkpoint
from lmforge.errors import ConfigError, LmforgeError
from lmforge.models import registry

OBJECTIVES = {
    "clm": "lmforge.objectives.clm.CausalLM",
    "mlm": "lmforge.objectives.mlm.MaskedLM",
    "mlm_nsp": "lmforge.objectives.nsp.SentencePairLM",
    "seq2seq": "lmforge.objectives.seq2seq.Seq2SeqLM",
}


def net_from_checkpoint(ckpt: dict) -> nn.Module:
    """The trained net, rebuilt from the checkpoint's net class, config and weights (fp32, eval)."""
    meta = ckpt["lmforge"]
    net = get_class(meta["net_class"])(**meta["net_config"])
    # Parameter names are the net's own: compile and activation checkpointing are applied in place
    # (lmforge/parallel/wrap.py), so no `_orig_mod.` or wrapper prefix ever lands in a checkpoint.
    net.load_state_dict(
        {k.removeprefix("net."): v.float() for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    )
    return net.eval()


def find_tokenizer(ckpt_path: Path) -> Path | None:
    """The run's tokenizer.json: in the checkpoint's folder or the run folder above it."""
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    return None


def objective_class(ckpt: dict):
    config = ckpt["lmforge"].get("config") or {}
    target = (config.get("model") or {}).get("_target_") or OBJECTIVES.get(ckpt["lmforge"].get("objective"))
    return get_class(target) if target else None


def with_post_processor(tokenizer_json: Path, objective_cls, out: Path) -> Path:
    """A copy of the tokenizer that adds the objective's special tokens on encode (if it has any)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    processor = objective_cls.hf_post_processor(tok) if hasattr(objective_cls, "hf_post_processor") else None
    if processor is None:
        return tokenizer_json
    tok.post_processor = processor
    tok.save(str(out))
    return out


def export(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    from lmforge.models.hf import save_hf_folder

    checkpoint = Path(checkpoint)
    ckpt = read_checkpoint(checkpoint)
    net_class = get_class(ckpt["lmforge"]["net_class"])
    if registry.family_of(net_class) is None and registry.task_adapter_of(net_class) is None:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} holds a {ckpt['lmforge']['net_class']}, which is no registered model "
            f"family ({', '.join(registry.FAMILIES)}; lmforge/models/registry.py), so it has no Hugging Face export."
        )
    net = net_from_checkpoint(ckpt)
    tokenizer_json = Path(tokenizer) if tokenizer else find_tokenizer(checkpoint)
    if tokenizer_json is None or not tokenizer_json.is_file():
        raise ConfigError(f"no tokenizer.json next to {checkpoint} or in its run folder; pass --tokenizer <path>.")
    labels = labels_of(ckpt, checkpoint)
    updates = (
        {}
        if labels is None
        else {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok = with_post_processor(tokenizer_json, objective_class(ckpt), Path(tmp) / "tokenizer.json")
        return save_hf_folder(net, tok, out_dir, config_updates=updates)


def labels_of(ckpt: dict, ckpt_path: Path) -> list[str] | None:
    """A classifier's label names in output order: kept in its checkpoints, else the run folder's labels.json."""
    if "labels" in ckpt["lmforge"]:
        return list(ckpt["lmforge"]["labels"])
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        if (folder / "labels.json").is_file():
            return list(json.loads((folder / "labels.json").read_text()))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        help="a checkpoint written by lmforge (<run dir>/checkpoints/*.ckpt; a file, "
        "or the folder trainer=fsdp writes)",
    )
    parser.add_argument("out_dir", help="the Hugging Face folder to write")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the run folder's)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, args.tokenizer)
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = json.loads((out / "config.json").read_text())
    print(
        f"wrote {config['architectures'][0]} ({config['model_type']}) to {out}: "
        + ", ".join(sorted(p.name for p in out.iterdir()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
