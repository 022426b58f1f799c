"""MLflow access by URI (SQLite file or a server): one client, explicit run ids, no fluent globals.

Explicit run ids keep logging correct when Prefect runs tasks in worker threads.

Local state hygiene (issue 21):
- The first use of a SQLite store creates its tables; processes doing that at once failed
  (`OperationalError: duplicate column name`). `client_for` opens both stores (tracking and registry) once
  per process under a file lock beside the DB file, and `experiment_id` tolerates a concurrent creator.
- A SIGKILLed run stays RUNNING in MLflow forever. Every run records its owner (pid, process start time,
  host) as tags; `mark_dead_runs` (run at each run start and by `r2w status`) ends RUNNING runs whose
  owner is provably dead as KILLED, tagged with who found them and when.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from r2w.config import R2WConfig
from r2w.contracts import utcnow
from r2w.locks import file_lock

OWNER_PID, OWNER_STARTED, OWNER_HOST = "r2w.owner_pid", "r2w.owner_started", "r2w.owner_host"
KILLED_FOUND_BY, KILLED_FOUND_AT = "r2w.killed_found_by", "r2w.killed_found_at"
_OPENED: set[str] = set()  # tracking URIs whose stores this process has opened (tables exist)
_OPENING = threading.Lock()


def client_for(cfg: R2WConfig):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    return open_stores(
        lambda: MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri), cfg.tracking_uri
    )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None (a server, or in-memory SQLite)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def open_stores(make_client, uri: str):
    """`make_client()`, with the tracking and registry tables of a SQLite store created (first use) or opened
    one process at a time.

    MLflow checks "do all tables exist?" and then creates them: two processes on a new file both see "no"
    and the slower one fails. The client's constructor already opens the tracking store, so it is built
    under the lock too; the first process creates, the others find the tables. MLflow caches an opened store
    per process, so the lock is taken once per process and URI.
    """
    db = sqlite_path(uri)
    if db is None:
        return make_client()
    if uri in _OPENED and not db.is_file():  # deleted or moved since this process opened it
        _forget_cached_stores(uri)
    if uri in _OPENED:
        return make_client()
    with _OPENING:
        db.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(db.with_name(f".{db.name}.init.lock")):
            client = make_client()
            client.search_experiments(max_results=1)  # the tracking store: tables, migrations
            client.search_registered_models(max_results=1)  # the registry store, same file
        _OPENED.add(uri)
    return client


def _forget_cached_stores(uri: str) -> None:
    """Drop the stores and engines MLflow cached for `uri` in this process: their connections still point at
    a database file that was deleted or moved (writes then fail with "attempt to write a readonly database").
    A long-lived process (`r2w serve`, tests) thus starts afresh on a new data dir at the same path."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for store_class in (SqlAlchemyStore, RegistryStore):
        engine = store_class._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    for registry in (tracking_utils._tracking_store_registry, registry_utils._model_registry_store_registry):
        if registry is not None:
            type(registry)._get_store_with_resolved_uri.cache_clear()
    _OPENED.discard(uri)


def experiment_id(client, cfg: R2WConfig) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if cfg.tracking_uri.startswith("sqlite:"):
        artifacts = (cfg.data_path / "mlartifacts").as_uri()
    try:
        return client.create_experiment(cfg.registry.experiment, artifact_location=artifacts)
    except MlflowException:  # another process created it first (RESOURCE_ALREADY_EXISTS)
        exp = client.get_experiment_by_name(cfg.registry.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def owner_tags() -> dict[str, str]:
    """Who runs this MLflow run: enough to prove later that it died (a reused pid has another start time)."""
    import psutil

    me = psutil.Process()
    return {OWNER_PID: str(me.pid), OWNER_STARTED: repr(me.create_time()), OWNER_HOST: socket.gethostname()}


def start_run(client, cfg: R2WConfig, run_name: str, tags: dict[str, str] | None = None) -> str:
    """A new run tagged with its owner; RUNNING runs of dead owners in the experiment are closed as KILLED."""
    exp = experiment_id(client, cfg)
    run = client.create_run(exp, run_name=run_name, tags={**(tags or {}), **owner_tags()})
    mark_dead_runs(client, [exp], found_by=f"run {run.info.run_id}")
    return run.info.run_id


def owner_dead(tags: dict[str, str]) -> bool:
    """True only when the run's recorded owner provably no longer runs: same host, and no process with its
    pid, or one with another start time. Unknown owners and other hosts are never declared dead."""
    import psutil

    try:
        pid, started = int(tags[OWNER_PID]), float(tags[OWNER_STARTED])
    except (KeyError, ValueError):
        return False
    if tags.get(OWNER_HOST) != socket.gethostname():
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) >= 0.01 or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def mark_dead_runs(client, experiment_ids: list[str], found_by: str) -> list[str]:
    """Mark RUNNING runs whose owner is provably dead KILLED, with `r2w.killed_found_by/_at` tags."""

    if not experiment_ids:
        return []
    running = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    killed = []
    for run in running:
        if not owner_dead(run.data.tags):
            continue
        run_id = run.info.run_id
        by = f"{found_by} (pid {os.getpid()} on {socket.gethostname()})"
        client.set_tag(run_id, KILLED_FOUND_BY, by)
        client.set_tag(run_id, KILLED_FOUND_AT, utcnow().isoformat())
        client.set_terminated(run_id, "KILLED")
        killed.append(run_id)
    return killed


def log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    flat = flatten(params)
    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k.replace(":", "."), float(v), now, step) for k, v in metrics.items()]
    if items:
        client.log_batch(run_id, metrics=items)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config dict -> dotted keys, as MLflow params are logged."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextmanager
def registry_lock(cfg: R2WConfig) -> Iterator[None]:
    """One registry writer per model name on this machine (flows for one model never interleave)."""
    with file_lock(cfg.data_path / "locks" / f"registry-{cfg.registry.model_name}.lock"):
        yield


def artifact_dir_uri(client, run_id: str, sub: str) -> str:
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{sub}"


def path_exists(p: str | Path) -> bool:
    return Path(p).exists()
