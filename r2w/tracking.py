"""MLflow access by URI (SQLite file or a server): one client, explicit run ids, no fluent globals.

Explicit run ids keep logging correct when Prefect runs tasks in worker threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from r2w.config import R2WConfig
from r2w.locks import file_lock


def client_for(cfg: R2WConfig):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def experiment_id(client, cfg: R2WConfig) -> str:
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if cfg.tracking_uri.startswith("sqlite:"):
        artifacts = (cfg.data_path / "mlartifacts").as_uri()
    return client.create_experiment(cfg.registry.experiment, artifact_location=artifacts)


def start_run(client, cfg: R2WConfig, run_name: str, tags: dict[str, str] | None = None) -> str:
    run = client.create_run(experiment_id(client, cfg), run_name=run_name, tags=tags or {})
    return run.info.run_id


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
