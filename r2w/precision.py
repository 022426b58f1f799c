"""Pick the floating-point precision the hardware runs fast (`models.dtype: auto`, `distill.bf16: auto`).

Why: on CPUs without native bf16 (AVX2 only, e.g. AMD EPYC Rome/Milan) a bf16 matmul runs ~7x slower
than float32 (measured: 7 vs 52 GFLOP/s per thread, ../shared/STACK.md), and vLLM falls back from
oneDNN to plain torch linear. CPUs with AVX-512-BF16 or AMX run bf16 natively. So `auto` means:
CUDA with bf16 support -> bfloat16; CPU with `avx512_bf16` or `amx_bf16` -> bfloat16; else float32.
An explicit dtype always wins. `R2W_CPU_FLAGS` (comma-separated) stands in for the CPU's flags, so a
run or a test can ask what a machine of the other kind would choose.
"""

from __future__ import annotations

import os
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU's feature flags (from /proc/cpuinfo), or `R2W_CPU_FLAGS` when set."""
    override = os.environ.get("R2W_CPU_FLAGS")
    if override is not None:
        return {f.strip() for f in override.split(",") if f.strip()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cuda_bf16() -> bool | None:
    """True/False when a CUDA device is present (bf16 supported or not); None without one."""
    import torch  # only when `auto` is asked for: torch is slow to import

    if not torch.cuda.is_available():
        return None
    return bool(torch.cuda.is_bf16_supported())


def resolve_dtype(requested: str, flags: set[str] | None = None, cuda: bool | None = None) -> tuple[str, str]:
    """(dtype, why) for a requested dtype: 'auto' probes the hardware, anything else is kept."""
    if requested != "auto":
        return requested, "set in the config"
    if cuda is None and flags is None and "R2W_CPU_FLAGS" not in os.environ:  # the override emulates a CPU
        cuda = cuda_bf16()
    if cuda is not None:
        return ("bfloat16", "auto: CUDA with bf16") if cuda else ("float32", "auto: CUDA without bf16")
    native = NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags)
    if native:
        return "bfloat16", f"auto: CPU has native bf16 ({', '.join(sorted(native))})"
    return "float32", "auto: CPU has no native bf16 (no avx512_bf16/amx_bf16): bf16 matmuls would be ~7x slower"
