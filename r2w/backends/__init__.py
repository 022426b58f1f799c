"""Generation backends behind one interface; pick one by config, the flow never branches."""

from __future__ import annotations

from pathlib import Path

from r2w.backends.base import Completion, GenerationBackend, SamplingParams

__all__ = ["Completion", "GenerationBackend", "SamplingParams", "make_backend"]


def make_backend(
    kind: str,
    model_path: str | Path,
    adapter_path: str | Path | None = None,
    dtype: str = "bfloat16",
    url: str | None = None,
    seed: int = 0,
) -> GenerationBackend:
    """Build the configured backend ('auto' picks vLLM when it is installed)."""
    if kind == "auto":
        kind = "vllm" if _vllm_available() and adapter_path is None else "transformers"
    if kind == "transformers":
        from r2w.backends.hf import TransformersBackend

        return TransformersBackend(model_path, adapter_path=adapter_path, dtype=dtype, seed=seed)
    raise ValueError(f"models.backend: unknown or unavailable backend {kind!r} (expected transformers)")


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
