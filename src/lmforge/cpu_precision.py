"""Whether bf16-mixed trains faster than 32-true on this CPU at a model's width: measured once, then remembered.

Where bf16 wins depends on the CPU more than any rule can say: on one AVX512-BF16 EPYC a 0.8M-parameter GPT (d 128)
trained 5-10% slower in bf16-mixed, on another (Zen 4) 7% faster, and 1.5x faster at the same width with an 8192
vocabulary (bench/precision.py). So the default precision asks this CPU: `bf16_mixed_is_faster(d_model)` times the
training step of a one-block GPT at that width (512 tokens), fp32 against bf16
autocast, in interleaved rounds, and keeps the answer in `<paths.cache_dir>/cpu_precision.json` keyed by the CPU,
torch's version and the width. Every later run on the machine, a sweep's runs included, reads the same answer,
and the ranks a run starts inherit it through LMFORGE_CPU_PRECISION (set here before they start), so that the
processes of one run never disagree. bf16 must be at least BF16_MIN_GAIN faster to be chosen: a near tie keeps
the wider precision.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ENV = "LMFORGE_CPU_PRECISION"  # {key: bool} decisions this process made or inherited, for the ranks it starts
CACHE_FILE = "cpu_precision.json"
BF16_MIN_GAIN = 1.05  # fp32 time / bf16 time needed to choose bf16-mixed
PROBE_TOKENS, PROBE_SEQ, PROBE_VOCAB = 512, 64, 256
PROBE_MAX_D_MODEL = 512  # wider, bf16 won on every bf16 CPU measured (2.6x at d 1024 here), and a probe takes seconds
ROUNDS, REPEATS = 3, 3
# A rank started by a launcher that did not pass a decision down (multi-node SLURM: every task starts on its own)
# must not measure for itself and disagree with the others: it uses the fixed rule below, as all its peers do.
LAUNCHED_RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID")
RULE_MIN_D_MODEL = 192  # the rule's width: between 128 (slower on one machine) and 256 (1.9-2.1x faster on all)


def cache_dir() -> Path:
    # the same place conf/paths/default.yaml puts paths.cache_dir, read here before the config is resolved
    return Path(os.environ.get("LMFORGE_CACHE_DIR") or Path.home() / ".cache" / "lmforge")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def decision_key(d_model: int) -> str:
    import torch

    return f"{cpu_name()} | torch {torch.__version__} | d_model {d_model}"


def bf16_mixed_is_faster(d_model: int) -> bool:
    """Whether bf16-mixed beats 32-true by BF16_MIN_GAIN on this CPU at `d_model` (the CPU has bf16 instructions)."""
    if d_model > PROBE_MAX_D_MODEL:
        return True
    key = decision_key(d_model)
    decided = _inherited()
    if key not in decided:
        remembered = _read_cache().get(key)
        if remembered is not None:
            decided[key] = bool(remembered["bf16_mixed_faster"])
        elif any(os.environ.get(v) for v in LAUNCHED_RANK_VARS):
            decided[key] = d_model >= RULE_MIN_D_MODEL
        else:
            measured = measure(d_model)
            decided[key] = measured["bf16_mixed_faster"]
            _write_cache(key, measured)
    os.environ[ENV] = json.dumps(decided)
    return decided[key]


def measure(d_model: int) -> dict:
    """Seconds of a one-block GPT's training step at `d_model`, fastest of REPEATS in each of ROUNDS interleaved
    rounds, in fp32 and under bf16 autocast; and the verdict."""
    import torch

    from lmforge.models.gpt import GPT

    torch.manual_seed(0)
    # a whole training step of a one-block GPT at the width: attention, norms, casts and the fp32 optimizer step
    # dilute bf16's matmul gain as they do in a real run (a bare matmul overstates it 2x at d 128)
    net = GPT(vocab_size=PROBE_VOCAB, max_seq_len=PROBE_SEQ, n_layer=1, n_head=_heads(d_model), d_model=d_model)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ids = torch.randint(0, PROBE_VOCAB, (PROBE_TOKENS // PROBE_SEQ, PROBE_SEQ + 1))

    def step(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    best = {False: float("inf"), True: float("inf")}
    step(False), step(True)  # first calls: allocations, kernel selection
    for _ in range(ROUNDS):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], *(step(bf16) for _ in range(REPEATS)))
    gain = best[False] / best[True]
    return {
        "bf16_mixed_faster": gain >= BF16_MIN_GAIN,
        "fp32_s": best[False],
        "bf16_mixed_s": best[True],
        "gain": gain,
        "threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _heads(d_model: int) -> int:
    return next(h for h in (4, 2, 1) if d_model % h == 0)


def _inherited() -> dict[str, bool]:
    try:
        return {str(k): bool(v) for k, v in json.loads(os.environ.get(ENV) or "{}").items()}
    except (ValueError, AttributeError):
        return {}


def _read_cache() -> dict:
    try:
        return json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, measured: dict) -> None:
    """Add one decision to the cache file (a whole new file renamed over the old: readers never see half of one).
    A cache that cannot be written costs only a new measurement next time."""
    path = cache_dir() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {**_read_cache(), key: measured}
        staged = path.with_name(f"{path.name}.{os.getpid()}")
        staged.write_text(json.dumps(entries, indent=2) + "\n")
        staged.replace(path)
    except OSError:
        pass
