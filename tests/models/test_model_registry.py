"""lmforge.models.registry: the built-in families are found by net class (FSDP2's generated subclasses too) and by
Hugging Face model_type, and a fourth family added here, in this file only (a toy net, its HF model and its
adapter, registered in the registry), gets FLOPs, parameter printing, HF conversion both ways, folder save/load
and `python -m lmforge.export` of a checkpoint without any change to lmforge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub, even by accident

import pytest
import torch
from torch import nn

from lmforge.flops import linear_flops, training_flops
from lmforge.models import registry
from lmforge.models.bert import BERT
from lmforge.models.gpt import GPT
from lmforge.models.llama import Llama
from lmforge.models.t5 import T5
from lmforge.param_count import describe_parameters
from lmforge.protocols import Net


def test_builtin_families_by_name_class_and_model_type():
    assert {n: f.net_class for n, f in registry.FAMILIES.items()} == {
        "gpt": GPT,
        "bert": BERT,
        "t5": T5,
        "llama": Llama,
    }
    for name, model_type in (("gpt", "gpt2"), ("bert", "bert"), ("t5", "t5"), ("llama", "llama")):
        family = registry.FAMILIES[name]
        assert registry.family_of(family.net_class) is family
        assert registry.family_of_model_type(model_type) is family
        assert family.model_config == name  # model=gpt, model=bert, model=t5 (conf/model/)
    assert registry.family_of(nn.Linear(2, 2)) is None and registry.family_of_model_type("mistral") is None
    assert registry.hf_model_types() == ["bert", "gpt2", "llama", "t5"]


def test_lookup_sees_through_fsdps_generated_subclass():
    net = GPT(vocab_size=16, max_seq_len=8, n_layer=1, n_head=1, d_model=8)
    net.__class__ = type("FSDPGPT", (type(net),), {})  # what fully_shard does to the net's class
    assert registry.family_of(net) is registry.FAMILIES["gpt"]


def test_names_and_model_types_are_unique():
    gpt = registry.FAMILIES["gpt"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(gpt)
    with pytest.raises(ValueError, match="gpt2"):
        registry.register(registry.Family("gpt_again", nn.Linear, gpt.load_hf_adapter, ("gpt2",), "gpt"))


def test_importing_the_registry_imports_no_adapter_and_no_transformers():
    import subprocess
    import sys

    code = (
        "import sys, lmforge.models.registry, lmforge.flops, lmforge.export, lmforge.init_from; "
        "print(sorted(m for m in sys.modules if m == 'transformers' or m.endswith('_hf')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- a toy fourth family, defined only here


@dataclass
class ToyConfig:
    vocab_size: int
    max_seq_len: int = 16
    d_model: int = 8
    n_layer: int = 2


class Toy(nn.Module):
    """Embeddings, a stack of residual Linear blocks, an untied output layer."""

    def __init__(self, **kwargs):
        super().__init__()
        self.config = cfg = ToyConfig(**kwargs)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        for p in self.parameters():
            nn.init.normal_(p, std=0.1)

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def config_dict(self) -> dict:
        return asdict(self.config)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def forward_flops(self, batch: Mapping[str, torch.Tensor]) -> int | None:
        n = batch["input_ids"].numel()
        d = self.config.d_model
        return self.config.n_layer * linear_flops(n, d, d) + linear_flops(n, d, self.config.vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(input_ids)
        for block in self.blocks:
            x = x + block(x)
        return self.lm_head(x)


@pytest.fixture
def toy_family():
    """The toy family, with a Hugging Face model of its own (a transformers custom model), registered for one
    test and removed after."""
    transformers = pytest.importorskip("transformers")
    from lmforge.models.hf import HFAdapter, unsupported

    class ToyHFConfig(transformers.PretrainedConfig):
        model_type = "lmforge-toy"

        def __init__(self, vocab_size=16, hidden_size=8, num_layers=2, n_positions=16, **kwargs):
            self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
            self.n_positions = n_positions
            super().__init__(**kwargs)

    class ToyForLM(transformers.PreTrainedModel):
        config_class = ToyHFConfig

        def __init__(self, config):
            super().__init__(config)
            d = config.hidden_size
            self.embed = nn.Embedding(config.vocab_size, d)
            self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(config.num_layers))
            self.out = nn.Linear(d, config.vocab_size, bias=False)
            self.post_init()

        def forward(self, input_ids):
            x = self.embed(input_ids)
            for layer in self.layers:
                x = x + layer(x)
            return self.out(x)

    class ToyAdapter(HFAdapter):
        hf_class = "ToyForLM"

        def hf_model_class(self):
            return ToyForLM

        def key_pairs(self, net):
            pairs = [("wte.weight", "embed.weight", False), ("lm_head.weight", "out.weight", False)]
            for i in range(net.config.n_layer):
                pairs += [(f"blocks.{i}.{p}", f"layers.{i}.{p}", False) for p in ("weight", "bias")]
            return pairs

        def to_hf_config(self, net):
            c = net.config
            return ToyHFConfig(c.vocab_size, c.d_model, c.n_layer, c.max_seq_len)

        def from_hf_config(self, hf_model):
            c = hf_model.config
            if c.num_layers < 1:
                raise unsupported(c.model_type, "no layers")
            return Toy(vocab_size=c.vocab_size, max_seq_len=c.n_positions, d_model=c.hidden_size, n_layer=c.num_layers)

    transformers.AutoConfig.register("lmforge-toy", ToyHFConfig, exist_ok=True)  # what load_hf_folder reads
    family = registry.register(registry.Family("toy", Toy, ToyAdapter, ("lmforge-toy",), "toy"))
    yield family
    del registry.FAMILIES["toy"]


def test_toy_family_is_a_net_with_flops_and_a_parameter_line(toy_family):
    net = Toy(vocab_size=16)
    assert isinstance(net, Net) and registry.family_of(net) is toy_family
    assert registry.family_of_model_type("lmforge-toy") is toy_family
    batch = {"input_ids": torch.zeros(3, 5, dtype=torch.long)}
    assert training_flops(net, batch) == 3 * (2 * 2 * 15 * 8 * 8 + 2 * 15 * 8 * 16)
    assert describe_parameters(net) == "wte 128, blocks 2 x 72, lm_head 128"


def test_toy_family_converts_both_ways_and_through_a_folder(toy_family, tmp_path):
    from lmforge.models.hf import from_hf, load_hf_folder, save_hf_folder, to_hf

    torch.manual_seed(0)
    net = Toy(vocab_size=16).eval()
    x = torch.randint(0, 16, (2, 7))
    hf = to_hf(net)
    assert type(hf).__name__ == "ToyForLM"
    with torch.no_grad():
        assert torch.equal(net(x), hf(x))
        back = from_hf(hf)
        assert type(back) is Toy and back.config == net.config and torch.equal(back(x), net(x))
        save_hf_folder(net, None, tmp_path / "hf")
        loaded = load_hf_folder(tmp_path / "hf")
        assert type(loaded) is Toy and torch.equal(loaded(x), net(x))


def test_toy_family_exports_from_a_checkpoint(toy_family, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lmforge.export import export

    net = Toy(vocab_size=16)
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "lmforge": {"net_class": f"{Toy.__module__}.Toy", "net_config": net.config_dict()},
    }
    (tmp_path / "checkpoints").mkdir()
    torch.save(ckpt, tmp_path / "checkpoints" / "last.ckpt")
    tok = Tokenizer(models.WordLevel({"<unk>": 0, **{f"w{i}": i for i in range(1, 16)}}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))

    out = export(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    from lmforge.models.hf import load_hf_folder

    x = torch.randint(0, 16, (1, 4))
    with torch.no_grad():
        assert torch.equal(load_hf_folder(out)(x), net(x))
