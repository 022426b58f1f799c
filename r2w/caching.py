"""Prefect cache policies keyed on what a stage actually depends on.

A stage's key = its code (TASK_SOURCE) + the config sections it reads + its data inputs
(content-hashed refs, records). Changing a gate threshold therefore re-runs only the gate;
a killed flow, rerun, resumes at the first stage whose key it has not stored a result for.
Live objects (backends, stores, LMs) enter the key by their `identity`, never by value.

A stored result is only a pointer to what a stage wrote (datasets, student folders, hints in Chroma): a
cache hit whose referents were deleted, moved or damaged since is expired and the stage recomputed
(`VerifiedCache`). Results live under the data dir (`results_under`), never in ~/.prefect/storage, so two
projects never share them and deleting a data dir deletes its cache with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy, CompoundCachePolicy
from pydantic import BaseModel

from r2w.config import R2WConfig
from r2w.contracts import content_hash
from r2w.datasets import DatasetRef, discard_dataset, verify_dataset

log = logging.getLogger(__name__)

# (cached result, the task's inputs) -> why the result can no longer be used, or None
ResultCheck = Callable[[Any, dict[str, Any]], str | None]

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


def stage_cache(*sections: str, ignore: tuple[str, ...] = (), check: ResultCheck | None = None) -> CachePolicy:
    """Cache on the task's source, the named config sections and every other input's content.

    `ignore` names parameters that must not enter the key (e.g. the MLflow run id, which is
    new on every run and only used for provenance). A stored result is reused only while what it
    refers to is intact (`stale_reason`, plus the stage's own `check`).
    """

    def key(_ctx, parameters: dict[str, Any]) -> str:
        return content_hash({n: _fingerprint(v, sections) for n, v in parameters.items() if n not in ignore})

    return VerifiedCache(policies=[CacheKeyFnPolicy(cache_key_fn=key), TASK_SOURCE], check=check)


@dataclass
class VerifiedCache(CompoundCachePolicy):
    """A compound cache policy (same keys as `policies` combined) whose hits must still be true: before
    Prefect looks a key up, the stored result is read and, if it names datasets or folders that are gone or
    damaged (or `check` objects), it is expired in place (rewritten with an expiration in the past, Prefect's
    own cache-expiry mechanism), so the stage recomputes and overwrites it. Any storage block works: nothing
    is deleted behind Prefect's back."""

    check: ResultCheck | None = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        key = super().compute_key(task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters, **kwargs)
        if key is not None and task_ctx is not None and task_ctx.result_store is not None:
            expire_if_stale(task_ctx.result_store, key, inputs, self.check, task_ctx.task.name)
        return key

    def __add__(self, other: CachePolicy) -> CachePolicy:
        combined = super().__add__(other)  # a plain CompoundCachePolicy: keep verifying
        return VerifiedCache(
            policies=combined.policies,
            key_storage=combined.key_storage,
            isolation_level=combined.isolation_level,
            lock_manager=combined.lock_manager,
            check=self.check,
        )


def expire_if_stale(store, key: str, inputs: dict[str, Any], check: ResultCheck | None = None, name: str = "") -> str:
    """Expire the result stored under `key` when it can no longer be trusted; returns the reason ('' if kept)."""
    if not store.exists(key):
        return ""
    result: Any = None
    try:
        result = store.read(key).result
        reason = stale_reason(result) or (check(result, inputs) if check else None)
    except Exception as exc:  # noqa: BLE001 - an unreadable record is as useless as a stale one
        reason = f"stored result unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    if not reason:
        return ""
    log.warning("cached result of %s is stale, recomputing: %s", name or "a stage", reason)
    store.write(None, key=key, expiration=datetime.now(UTC) - timedelta(seconds=1))
    for ref in _dataset_refs(result):  # damaged versions go: the recomputed data may hash differently
        if Path(ref.path).exists() and verify_dataset(ref) is not None:
            discard_dataset(ref.path)
    return reason


def _dataset_refs(value: Any) -> Iterator[DatasetRef]:
    if isinstance(value, DatasetRef):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _dataset_refs(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _dataset_refs(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _dataset_refs(item)


def stale_reason(value: Any) -> str | None:
    """Why a stored stage result refers to something that is no longer there, or None.

    Datasets must exist and verify against their content hash; every path must exist (a folder must not be
    empty). Walks models, lists, tuples and dicts, so new result types are covered without registration.
    """
    if isinstance(value, DatasetRef):
        return verify_dataset(value)
    if isinstance(value, Path):
        if not value.exists():
            return f"{value} is missing"
        if value.is_dir() and not any(value.iterdir()):
            return f"{value} is empty"
        return None
    if isinstance(value, BaseModel):
        items: Any = (getattr(value, name) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return None
    for item in items:
        if reason := stale_reason(item):
            return reason
    return None


def result_dir(data_dir: str | Path) -> Path:
    """Where a project's task results live: <data_dir>/prefect/storage (Prefect's own layout under PREFECT_HOME)."""
    return Path(data_dir).expanduser().resolve() / "prefect" / "storage"


@contextmanager
def results_under(data_dir: str | Path) -> Iterator[Path]:
    """Persist task results under the data dir for the block, whatever PREFECT_LOCAL_STORAGE_PATH says.

    PREFECT_HOME alone does not move results (they went to ~/.prefect/storage, shared by every project on
    the machine, and outlived a deleted data dir). One process may run flows for several data dirs (tests,
    `r2w serve`), so an environment variable read once at import is not enough: inside a flow run the run's
    result store is swapped (a copy of Prefect's FlowRunContext, re-entered: tasks inherit its storage);
    the default storage setting is moved too, for tasks called outside a flow.
    """
    from prefect.context import FlowRunContext
    from prefect.filesystems import LocalFileSystem
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    folder = result_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: folder}):
        ctx = FlowRunContext.get()
        if ctx is None or ctx.result_store is None:
            yield folder
            return
        store = ctx.result_store.model_copy(update={"result_storage": LocalFileSystem(basepath=str(folder))})
        with ctx.model_copy(update={"result_store": store}):
            yield folder


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


def expensive_stage(
    name: str, *sections: str, ignore: tuple[str, ...] = (), check: ResultCheck | None = None
) -> dict[str, Any]:
    """The task options every expensive stage shares: content-keyed, verified cache, persisted result,
    two retries with backoff on transient errors only."""
    return dict(
        name=name,
        cache_policy=stage_cache(*sections, ignore=ignore, check=check),
        persist_result=True,
        retries=2,
        retry_delay_seconds=[5, 30],
        retry_condition_fn=retry_transient,
    )
