"""Parallel rollouts across worker processes with Prefect's Dask task runner.

    r2w collect parallel --config demo --shards 2

The training games are split into shards; each shard runs as a Prefect task on a Dask worker
that loads its own backend (models never travel between processes), and the shards' episodes
are merged into the same content-hashed `episodes` / `failures` datasets that `collect` writes.
On one 2-core machine this mostly shows the pattern; on a Dask cluster (or a Ray one through
prefect-ray) the same flow spreads rollouts over machines.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, task
from pydantic import BaseModel

from r2w.backends import make_backend
from r2w.config import R2WConfig, load_config
from r2w.contracts import Episode
from r2w.models import resolve_model
from r2w.runtime import configure_environment, set_torch_threads
from tasks.collect import play_training_games, store_rollouts


class Shard(BaseModel):
    shard: int
    pid: int
    episodes: list[Episode]


@task(name="collect-shard")
def collect_shard(cfg: R2WConfig, shard: int, shards: int) -> Shard:
    configure_environment(cfg.data_dir)
    set_torch_threads(cfg.runtime.torch_threads)
    backend = make_backend(
        cfg.models.backend, resolve_model(cfg.models.base, cfg.data_path), dtype=cfg.models.dtype, seed=cfg.runtime.seed
    )
    episodes = play_training_games(cfg, backend, "base", shard, shards)
    return Shard(shard=shard, pid=os.getpid(), episodes=episodes)


@flow(name="parallel-collect")
def parallel_collect(config: str = "demo", overrides: dict[str, Any] | None = None, shards: int = 2) -> dict:

    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    resolve_model(cfg.models.base, cfg.data_path)  # provision once here, not racing in every worker
    futures = [collect_shard.submit(cfg, i, shards) for i in range(shards)]
    parts = [f.result() for f in futures]
    episodes = sorted((e for p in parts for e in p.episodes), key=lambda e: e.task_id)
    stored = store_rollouts(cfg, episodes, {"policy": "base", "shards": shards})  # scrubbed, like collect's
    return {
        "episodes": stored.episodes.model_dump(),
        "failures": stored.failures.model_dump(),
        "scrubbed": stored.scrubbed,
        "worker_pids": sorted({p.pid for p in parts}),
    }


def dask_runner(shards: int):
    """A local Dask cluster with one single-threaded worker process per shard."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(cluster_kwargs={"n_workers": shards, "threads_per_worker": 1, "processes": True})


def run_parallel_collect(config: str, overrides: dict | None, shards: int) -> dict:
    return parallel_collect.with_options(task_runner=dask_runner(shards))(config, overrides, shards)
