"""MFU of GPT-2 small (124M) training at sequence length 1024 in bf16, with and without torch.compile, on one GPU.

    python bench/mfu.py                                   # writes bench/results/mfu.json (needs a CUDA GPU)
    python bench/mfu.py --device cpu --tiny --steps 3 --out /tmp/mfu.json   # smoke run of the code path on CPU

A plain training loop (the lmforge GPT net, AdamW, bf16 autocast, gradient clipping) without Lightning, so the
figure is the model's and the compiler's, not the trainer's. MFU = model FLOPs per second / the device's peak
dense bf16 FLOP/s (lmforge.hardware), with model FLOPs per token = 6 x parameters (excluding the position table)
+ 12 x layers x d_model x sequence length (attention scores and values, forward and backward; PaLM, appendix B).
compile=blocks is what `compile=true` does in training (each transformer block, lmforge.parallel.wrap).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.models.gpt import GPT  # noqa: E402
from lmforge.parallel.wrap import compile_net, transformer_blocks  # noqa: E402

GPT2_124M = dict(vocab_size=50304, max_seq_len=1024, n_layer=12, n_head=12, d_model=768)  # 50257 rounded up to 64
TINY = dict(vocab_size=512, max_seq_len=128, n_layer=2, n_head=2, d_model=64)


def flops_per_token(net: GPT, seq_len: int) -> float:
    c = net.config
    return 6 * net.num_parameters(exclude_embeddings=True) + 12 * c.n_layer * c.d_model * seq_len


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    from lmforge import hardware

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = hardware.cuda_device_name_to_key(name)
        return (hardware.peak_flops(key, "bf16") if key else None), name
    try:
        return hardware.peak_flops("cpu", "bf16"), "cpu"
    except ValueError:
        return None, "cpu"


def measure(compile_mode: str | None, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = GPT(**(TINY if args.tiny else GPT2_124M)).to(device)
    compile_net(net, transformer_blocks(net), compile_mode)
    opt = torch.optim.AdamW(net.parameters(), lr=6e-4, fused=device.type == "cuda")
    seq = net.config.max_seq_len
    ids = torch.randint(0, net.config.vocab_size, (args.batch, seq + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = net(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    for _ in range(args.warmup):  # includes compilation
        step()
    sync()
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    step_s = (time.perf_counter() - started) / args.steps
    tokens_per_sec = args.batch * seq / step_s
    peak, device_name = peak_flops(device)
    achieved = tokens_per_sec * flops_per_token(net, seq)
    return {
        "compile": compile_mode or False,
        "step_time_s": step_s,
        "tokens_per_sec": tokens_per_sec,
        "model_flops_per_sec": achieved,
        "mfu": achieved / peak if peak else None,
        "device": device_name,
        "peak_flops_bf16": peak,
        "warmup_s_incl_compile": warmup_s,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (8 x 1024 tokens fits 40 GB)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the code path, not a figure")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mfu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark is for GPUs (--device cpu --tiny checks the code path)")
    torch.set_float32_matmul_precision("high")
    results = [measure(mode, args, device) for mode in (None, "blocks")]
    report = {
        "model": "tiny" if args.tiny else "gpt2-124m",
        "seq_len": (TINY if args.tiny else GPT2_124M)["max_seq_len"],
        "batch": args.batch,
        "precision": "bf16-mixed",
        "torch": torch.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"compile={r['compile']}: {r['tokens_per_sec']:,.0f} tokens/s, MFU {mfu}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
