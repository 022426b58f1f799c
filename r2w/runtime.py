"""Process-wide settings that keep the stack offline, quiet and fast on a small CPU box.

The import-order rule, stated once: prefect, mlflow, dspy and huggingface_hub read their settings
(PREFECT_HOME, caches, offline flags) at import, and libgomp reads OMP_WAIT_POLICY when torch loads.
So the CLI (flows/cli.py) calls `configure_environment(data_dir)` in each command before importing
the flows, and the benchmarks call `configure_process()` from their package `__init__` and
`configure_environment` in `main`. These are the only function-local imports of r2w's own modules,
besides modules that need an optional extra (vLLM), which are imported when chosen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else litellm fetches a cost map at import
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "False",  # chroma
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    # child processes (vLLM engine core, Dask workers) read these at start; this process gets mallopt below
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "131072",
}
# glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8


def configure_process() -> None:
    """The half of `configure_environment` that needs no data dir: offline flags, OMP_WAIT_POLICY (which
    libgomp reads once, when torch loads) and malloc limits. Never overrides the user's; idempotent."""
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    limit_heap_fragmentation()


def configure_environment(data_dir: str | Path) -> Path:
    """Set offline defaults (never overriding the user's) and put every cache under data_dir."""
    data = Path(data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    configure_process()
    caches = {
        "PREFECT_HOME": data / "prefect",
        # PREFECT_HOME alone leaves task results in ~/.prefect/storage, shared by every project on the machine
        "PREFECT_LOCAL_STORAGE_PATH": data / "prefect" / "storage",
        "DSPY_CACHEDIR": data / "cache" / "dspy",
        "VLLM_CACHE_ROOT": data / "cache" / "vllm",
        "TORCHINDUCTOR_CACHE_DIR": data / "cache" / "inductor",
        "HF_HOME": data / "cache" / "hf",
        "MPLCONFIGDIR": data / "cache" / "matplotlib",
    }
    for key, path in caches.items():
        os.environ.setdefault(key, str(path))
    return data


def limit_heap_fragmentation() -> None:
    """Serve large blocks from mmap and cap malloc arenas, so freed tensors go back to the OS.

    Why: LoRA training on CPU with variable-length batches grew the process by ~100 MB per step
    under glibc's defaults (5.8 -> 9.9 GB in 40 SmolLM2 steps, then the OOM killer); with these
    settings it stayed at 2-4 GB. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_ARENA_MAX, int(os.environ.get("MALLOC_ARENA_MAX", "2")))
        libc.mallopt(_M_MMAP_THRESHOLD, int(os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")))
    except (OSError, AttributeError):  # not glibc
        return


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def fastest_threads(requested: str | int = "auto", size: int = 768, repeats: int = 3) -> tuple[int, str]:
    """(threads, why) for a compute-bound torch phase such as training.

    Why a probe and not a rule: on a quiet 2-core machine two threads train ~1.7x faster than one, while on
    a loaded one two OpenMP threads collapse (5-10x slower, ../shared/STACK.md). So `auto` times the same
    float32 matmul on 1 thread and on every core, right before the phase, and keeps the faster; more
    threads must win by 20% to be chosen. Costs well under a second. An int is kept as it is.
    """
    import torch

    if requested != "auto":
        return int(requested), "set in the config"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 1:
        return 1, "auto: one core"
    before = torch.get_num_threads()
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds: dict[int, float] = {}
    try:
        for n in (1, cores):
            torch.set_num_threads(n)
            a @ b  # warm-up: thread pool start
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                a @ b
                runs.append(time.perf_counter() - start)
            seconds[n] = sorted(runs)[len(runs) // 2]
    finally:
        torch.set_num_threads(before)
    return choose_threads(seconds)


def choose_threads(seconds: dict[int, float], min_speedup: float = 1.2) -> tuple[int, str]:
    """The thread count whose probe ran fastest, if it beat 1 thread by `min_speedup` (else 1), and why."""
    most = max(seconds)
    speedup = seconds[1] / seconds[most]
    chosen = most if speedup >= min_speedup else 1
    return chosen, f"auto: a matmul on {most} threads ran {speedup:.2f}x the speed of 1 thread"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    set_torch_threads(n)
    try:
        yield
    finally:
        set_torch_threads(before)
