"""Prefect cache policies keyed on what a stage actually depends on.

A stage's key = its code (TASK_SOURCE) + the config sections it reads + its data inputs
(content-hashed refs, records). Changing a gate threshold therefore re-runs only the gate;
a killed flow, rerun, resumes at the first stage whose key it has not stored a result for.
Live objects (backends, stores, LMs) enter the key by their `identity`, never by value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from pydantic import BaseModel

from r2w.config import R2WConfig
from r2w.contracts import content_hash

_PRIMITIVES = (str, int, float, bool, type(None), Path)


def _fingerprint(value: Any, sections: tuple[str, ...]) -> Any:
    if isinstance(value, R2WConfig):
        picked = {s: getattr(value, s).model_dump(mode="json") for s in sections}
        return {"data_dir": str(value.data_path), **picked}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, _PRIMITIVES):
        return str(value) if isinstance(value, Path) else value
    if isinstance(value, list | tuple):
        return [_fingerprint(v, sections) for v in value]
    if isinstance(value, dict):
        return {str(k): _fingerprint(v, sections) for k, v in value.items()}
    identity = getattr(value, "identity", None)
    if identity is None and callable(value):
        identity = f"callable:{getattr(value, '__qualname__', type(value).__name__)}"
    return identity or f"object:{type(value).__name__}"


def stage_cache(*sections: str, ignore: tuple[str, ...] = ()) -> CachePolicy:
    """Cache on the task's source, the named config sections and every other input's content.

    `ignore` names parameters that must not enter the key (e.g. the MLflow run id, which is
    new on every run and only used for provenance).
    """

    def key(_ctx, parameters: dict[str, Any]) -> str:
        return content_hash({n: _fingerprint(v, sections) for n, v in parameters.items() if n not in ignore})

    return CacheKeyFnPolicy(cache_key_fn=key) + TASK_SOURCE


TRANSIENT = (OSError, ConnectionError, TimeoutError, MemoryError)
# Bad input is never transient, although some of it is an OSError: a missing or unreadable file,
# a folder where a file belongs, and every ValueError (ConfigError, TraceImportError, a model that
# is not there: ModelNotFoundError is a FileNotFoundError). Retrying them only delays exit 2.
BAD_INPUT = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
    ValueError,
    TypeError,
    KeyError,
)


def is_transient(exc: BaseException) -> bool:
    """True for what can succeed on a second try (I/O, servers not ready, memory pressure)."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, BAD_INPUT)


def retry_transient(_task, _task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient errors; a bug or bad input fails at once
    instead of burning retries (5 s + 30 s for a missing file, before this rule)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classify, never swallow: the state keeps the error
        return is_transient(exc)
    return False


def expensive_stage(name: str, *sections: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The task options every expensive stage shares: content-keyed cache, persisted result,
    two retries with backoff on transient errors only."""
    return dict(
        name=name,
        cache_policy=stage_cache(*sections, ignore=ignore),
        persist_result=True,
        retries=2,
        retry_delay_seconds=[5, 30],
        retry_condition_fn=retry_transient,
    )
