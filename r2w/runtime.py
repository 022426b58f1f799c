"""Process-wide settings that keep the stack offline, quiet and fast on a small CPU box.

Must run before prefect/mlflow/dspy/transformers are imported: several read their settings
at import time.
"""

from __future__ import annotations

import os
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
}


def configure_environment(data_dir: str | Path) -> Path:
    """Set offline defaults (never overriding the user's) and put every cache under data_dir."""
    data = Path(data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    caches = {
        "PREFECT_HOME": data / "prefect",
        "DSPY_CACHEDIR": data / "cache" / "dspy",
        "VLLM_CACHE_ROOT": data / "cache" / "vllm",
        "TORCHINDUCTOR_CACHE_DIR": data / "cache" / "inductor",
        "HF_HOME": data / "cache" / "hf",
        "MPLCONFIGDIR": data / "cache" / "matplotlib",
    }
    for key, path in caches.items():
        os.environ.setdefault(key, str(path))
    return data


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
