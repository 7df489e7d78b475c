"""The parameter line train.py prints: each parameter once, tied weights named, repeated blocks folded."""

from __future__ import annotations

from lmforge.models.gpt import GPT
from lmforge.models.t5 import T5
from lmforge.param_count import describe_parameters, human_count


def test_gpt_line_counts_the_tied_head_once_and_folds_the_blocks():
    net = GPT(vocab_size=128, max_seq_len=16, n_layer=3, n_head=2, d_model=32)
    line = describe_parameters(net)
    block = sum(p.numel() for p in net.blocks[0].parameters())
    assert f"blocks 3 x {human_count(block)}" in line
    assert "(lm_head tied to wte)" in line and "lm_head 4" not in line
    assert line.startswith(f"wte {128 * 32:,}, wpe {16 * 32:,}")


def test_meta_device_nets_are_described_without_memory():
    import torch

    with torch.device("meta"):
        net = T5(vocab_size=128, d_model=32, d_kv=8, d_ff=64, n_head=4, n_layer=2)
    line = describe_parameters(net)
    assert line.startswith(f"shared {128 * 32:,}, encoder ") and "decoder" in line
