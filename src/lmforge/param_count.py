"""Where a net's parameters are, in one line: printed by train.py instead of Lightning's model summary.

Lightning's summary table measured FLOPs on an example input that lmforge's modules do not define
(it printed "Total FLOPs: 0") and warned that it cannot size bf16-mixed models; the training FLOPs
per step are lmforge's own (lmforge/flops.py, perf/flops_per_step in summary.json).
"""

from __future__ import annotations

from torch import nn


def human_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 10_000 else f"{n:,}"


def describe_parameters(net: nn.Module) -> str:
    """e.g. "wte 524.3k, wpe 65.5k, blocks 4 x 789.8k, ln_f 512 (lm_head tied to wte)".

    Works on the meta device (FSDP's deferred init). A tied parameter counts once, in the first child
    that holds it; a ModuleList of identical blocks shows as count x size.
    """
    seen: dict[int, str] = {}
    parts, tied = [], []
    for name, child in net.named_children():
        own = 0
        for p in child.parameters():
            if id(p) in seen:
                if f"{name} tied to {seen[id(p)]}" not in tied:
                    tied.append(f"{name} tied to {seen[id(p)]}")
                continue
            seen[id(p)] = name
            own += p.numel()
        if own == 0:
            continue
        if isinstance(child, nn.ModuleList) and len(child) > 1:
            sizes = {sum(p.numel() for p in block.parameters()) for block in child}
            if len(sizes) == 1:
                parts.append(f"{name} {len(child)} x {human_count(sizes.pop())}")
                continue
        parts.append(f"{name} {human_count(own)}")
    return ", ".join(parts) + (f" ({'; '.join(tied)})" if tied else "")
