"""Parallel rollouts through Prefect's Dask task runner: shards run in separate worker processes
and merge into the same datasets a single-process collect would write, scrubbed the same way."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq


def test_dask_sharded_collection(tmp_path):
    from flows.parallel_collect import run_parallel_collect
    from r2w.contracts import Episode
    from r2w.datasets import load_records

    # a private-data pattern that matches every TWX game text: the sharded path must scrub it too
    overrides = {
        "data_dir": str(tmp_path),
        "collect": {"episodes": 4},
        "env": {"max_steps": 3},
        "privacy": {"patterns": {"place": "the room"}},
    }
    out = run_parallel_collect("test", overrides, shards=2)
    assert len(out["worker_pids"]) == 2 and os.getpid() not in out["worker_pids"]
    episodes = load_records(out["episodes"]["path"], Episode)
    assert len(episodes) == 4 and len({e.task_id for e in episodes}) == 4
    failures = load_records(out["failures"]["path"], Episode)
    assert {e.episode_id for e in failures} == {e.episode_id for e in episodes if not e.success}
    assert out["scrubbed"].get("place", 0) > 0
    for parquet in Path(out["episodes"]["path"]).rglob("*.parquet"):
        assert "the room" not in str(pq.read_table(parquet).to_pylist())
