"""End to end for BERT and T5 (and export for every family, Llama included): `python train.py model=bert_tiny|t5_tiny`,
`python -m lmforge.export <ckpt> <dir>` to a folder `transformers` loads with the same logits, and
`model.init_from=<that folder>` to start a run from it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY, run_dir_from_output, run_train

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

FAMILIES = {
    "gpt_tiny": ("clm", "AutoModelForCausalLM"),
    "bert_tiny": ("mlm", "AutoModelForMaskedLM"),
    "t5_tiny": ("seq2seq", "AutoModelForSeq2SeqLM"),
    "llama_tiny": ("clm", "AutoModelForCausalLM"),
}


def tiny(model: str) -> list[str]:
    return [f"model={model}", *[a for a in TINY if not a.startswith("model=")]]


@pytest.fixture(scope="module")
def runs(text_corpus):
    """One tiny run per family; 10 steps, so last.ckpt holds the weights of the final validation."""
    out = {}
    for model in FAMILIES:
        proc = run_train([*tiny(model), "data=text", f"data.path={text_corpus}", "trainer.max_steps=10", "logger=csv"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[model] = run_dir_from_output(proc.stdout)
    return out


@pytest.mark.parametrize("model", ["bert_tiny", "t5_tiny"])
def test_bert_and_t5_train_end_to_end(runs, model):
    run_dir = runs[model]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["objective"] == FAMILIES[model][0] and s["model"] == model
    assert s["steps"] == 10 and s["tokens"] == 10 * 8 * 32
    for key in ("train/loss", "val/loss", "val/ppl") + (("val/acc",) if model == "bert_tiny" else ()):
        assert key in s["metrics"], key
    assert s["metrics"]["val/loss"] < math.log(s["data"]["vocab_size"]) + 0.5  # sane: near or below uniform
    header = (run_dir / "csv/metrics.csv").read_text().splitlines()[0]
    assert ("val/acc" in header) == (model == "bert_tiny")
    samples = (run_dir / "samples.txt").read_text()
    assert ("[MASK]" if model == "bert_tiny" else "<extra_id_0>") in samples and "predicted:" in samples


def export(ckpt, out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.export", str(ckpt), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = {}
    for model, run_dir in runs.items():
        folder = tmp_path_factory.mktemp(f"hf_{model}")
        proc = export(run_dir / "checkpoints" / "last.ckpt", folder)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "wrote" in proc.stdout
        out[model] = folder
    return out


@pytest.mark.parametrize("model", list(FAMILIES))
def test_exported_folder_loads_in_transformers_with_the_same_logits(runs, exported, model):
    from tokenizers import Tokenizer

    from lmforge.export import net_from_checkpoint, read_checkpoint

    folder = exported[model]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    hf, info = getattr(transformers, FAMILIES[model][1]).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    net = net_from_checkpoint(read_checkpoint(runs[model] / "checkpoints" / "last.ckpt"))

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.from_file(str(runs[model] / "tokenizer.json"))
    text = "the king and the queen speak"
    plain = ours.encode(text, add_special_tokens=False).ids
    ids = tok(text)["input_ids"]
    expected = {
        "gpt_tiny": plain,
        "llama_tiny": plain,
        "bert_tiny": [ours.token_to_id("[CLS]"), *plain, ours.token_to_id("[SEP]")],
        "t5_tiny": [*plain, ours.token_to_id("</s>")],
    }[model]
    assert ids == expected, "the exported tokenizer must encode as the model was trained"

    x = torch.tensor([ids])
    hf.eval()
    with torch.no_grad():
        if model == "t5_tiny":
            y = torch.tensor([[0, *plain[:4]]])
            a, b = net(x, decoder_input_ids=y), hf(input_ids=x, decoder_input_ids=y).logits
        else:
            a, b = net(x), hf(input_ids=x).logits
    assert (a - b).abs().max().item() <= 1e-4


def test_export_errors_are_clear(tmp_path):
    proc = export(tmp_path / "missing.ckpt", tmp_path / "out")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("model", ["bert_tiny", "llama_tiny"])
def test_init_from_an_exported_folder_starts_from_its_weights(runs, exported, text_corpus, model):
    first = json.loads((runs[model] / "summary.json").read_text())
    proc = run_train(
        [
            *tiny(model),
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=1",
            "model.optimizer.lr=1e-9",
            "model.net.n_layer=5",
            "logger=csv",
            f"model.init_from={exported[model]}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    s = json.loads((run_dir / "summary.json").read_text())
    # Same weights, same validation masks: the same validation loss as where the first run ended.
    assert abs(s["metrics"]["val/loss"] - first["metrics"]["val/loss"]) < 0.02, (s["metrics"], first["metrics"])
    config = (run_dir / "config.yaml").read_text()
    assert "n_layer: 2" in config and "n_layer: 5" not in config  # the folder's dims, not the config's


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def test_init_from_refuses_another_family_and_another_tokenizer(runs, exported, text_corpus, tmp_path):
    from lmforge.errors import ConfigError
    from lmforge.init_from import load_init_net

    data = ["data=text", f"data.path={text_corpus}"]
    with pytest.raises(ConfigError, match="holds a BERT checkpoint.*use model=bert"):
        load_init_net(compose(["model=gpt_tiny", *data, f"model.init_from={exported['bert_tiny']}"]))
    with pytest.raises(ConfigError, match="holds a Llama checkpoint.*use model=llama"):
        load_init_net(compose(["model=gpt_tiny", *data, f"model.init_from={exported['llama_tiny']}"]))
    with pytest.raises(ConfigError, match="different vocabulary"):
        load_init_net(
            compose(
                [
                    "model=bert_tiny",
                    *data,
                    "tokenizer=pretrained",
                    f"tokenizer.path={runs['gpt_tiny'] / 'tokenizer.json'}",
                    f"model.init_from={exported['bert_tiny']}",
                ]
            )
        )
    with pytest.raises(ConfigError, match="no config.json"):
        load_init_net(compose(["model=bert_tiny", *data, f"model.init_from={tmp_path}"]))
    with pytest.raises(ConfigError, match="max_seq_len=64"):  # the folder's context, not model=bert's 256
        load_init_net(compose(["model=bert", *data, f"model.init_from={exported['bert_tiny']}"]))
    cfg = compose(["model=bert", *data, "data.seq_len=32", f"model.init_from={exported['bert_tiny']}"])
    net = load_init_net(cfg)
    assert cfg.tokenizer.path == str(exported["bert_tiny"] / "tokenizer.json")  # the checkpoint's, automatically
    assert cfg.model.net.n_layer == net.config.n_layer == 2 and cfg.model.net.d_model == 32


@pytest.mark.distributed
def test_a_sharded_fsdp_checkpoint_exports_too(text_corpus, tmp_path):
    from lmforge.export import export as export_folder
    from lmforge.export import net_from_checkpoint, read_checkpoint

    proc = run_train(
        [
            *tiny("bert_tiny"),
            "data=text",
            f"data.path={text_corpus}",
            "trainer.max_steps=10",
            "logger=csv",
            "trainer=fsdp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run_dir_from_output(proc.stdout) / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir()  # one shard per rank
    out = export_folder(ckpt, tmp_path / "hf")
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    net = net_from_checkpoint(read_checkpoint(ckpt))
    x = torch.randint(5, 100, (2, 20))
    with torch.no_grad():
        assert (net(x) - hf.eval()(input_ids=x).logits).abs().max().item() <= 1e-4
