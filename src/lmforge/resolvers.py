"""OmegaConf resolvers used by conf/ (registered when lmforge is imported)."""

from __future__ import annotations

from functools import cache

from omegaconf import OmegaConf


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: CPU autocast to bf16 runs on native instructions (bench/precision.py measures the gain).

    Asks torch's own CPU capability report (what its kernels dispatch on) first, /proc/cpuinfo where that is missing.
    """
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@cache
def default_precision(d_model: int | None = None) -> str:
    """bf16-mixed where the hardware does bf16 natively and it is the faster: CUDA Ampere+, or a bf16 CPU where
    bf16-mixed measured faster at this model's width (lmforge/cpu_precision.py: once per machine and width, then
    remembered); 16-mixed on older GPUs; 32-true on CPUs without bf16 instructions (there bf16 is emulated, 70x
    slower per matmul on one AVX2 EPYC) and where the measurement found no gain. `d_model` is the net's width
    (conf/trainer/default.yaml passes model.net.d_model; None when the family names it otherwise)."""
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if not cpu_has_bf16():
        return "32-true"
    if not isinstance(d_model, int):
        return "bf16-mixed"
    from lmforge.cpu_precision import bf16_mixed_is_faster

    return "bf16-mixed" if bf16_mixed_is_faster(d_model) else "32-true"


def objective_name(target: str) -> str:
    """`name` of an objective class given its `_target_` (clm, mlm, seq2seq): W&B's job_type."""
    from hydra.utils import get_class

    return str(getattr(get_class(target), "name", target.rsplit(".", 1)[-1]))


def register() -> None:
    if not OmegaConf.has_resolver("lmforge.default_precision"):
        OmegaConf.register_new_resolver("lmforge.default_precision", default_precision)
    if not OmegaConf.has_resolver("lmforge.objective"):
        OmegaConf.register_new_resolver("lmforge.objective", objective_name)
