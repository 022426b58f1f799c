"""The `backfill` flow: re-collect failures of a past time window and run the pipeline per chunk.

    r2w backfill --since 2026-11-01 --until 2026-11-08 --chunk-hours 24 --config demo

Each chunk [a, b) is one `retrain` subflow with `collect.since/until` set (failures come from
the configured trace source). A chunk whose retrain already finished (an MLflow run tagged
`r2w.window=a/b` in state FINISHED) is skipped, so rerunning a finished window does no work;
a chunk that crashed is rerun and resumes from its cached stages.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.retrain import retrain
from r2w.config import load_config, merge_overrides
from r2w.registry import Tag
from r2w.runtime import configure_environment
from r2w.traces import parse_when
from r2w.tracking import client_for


class ChunkResult(BaseModel):
    since: str
    until: str
    status: str  # done | skipped-done
    mlflow_run_id: str | None = None
    registered_version: str | None = None
    reasons: list[str] = []


def chunk_window(since: datetime, until: datetime, hours: float) -> list[tuple[datetime, datetime]]:
    if until <= since:
        raise ValueError(f"--until {until.isoformat()} must be after --since {since.isoformat()}")
    if hours <= 0:
        raise ValueError(f"--chunk-hours {hours}: must be > 0")
    chunks, start, step = [], since, timedelta(hours=hours)
    while start < until:
        chunks.append((start, min(start + step, until)))
        start += step
    return chunks


@flow(name="backfill")
def backfill(
    since: str,
    until: str,
    chunk_hours: float = 24.0,
    config: str = "demo",
    overrides: dict[str, Any] | None = None,
) -> list[ChunkResult]:

    log = get_run_logger()
    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    if cfg.collect.source == "rollout":
        raise ValueError(
            "backfill: collect.source must be 'imports', 'traces' or 'mlflow' (rollouts have no past window)"
        )
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    client = client_for(cfg)
    results = []
    for a, b in chunk_window(start, end, chunk_hours):
        window = f"{a.isoformat()}/{b.isoformat()}"
        done = _finished_run(client, cfg, window)
        if done is not None:
            log.info("chunk %s already done in MLflow run %s: skipped", window, done.info.run_id)
            results.append(
                ChunkResult(
                    since=a.isoformat(),
                    until=b.isoformat(),
                    status="skipped-done",
                    mlflow_run_id=done.info.run_id,
                    registered_version=done.data.tags.get(Tag.REGISTERED_VERSION),
                )
            )
            continue
        chunk_overrides = merge_overrides(overrides, {"collect": {"since": a.isoformat(), "until": b.isoformat()}})
        summary = retrain(config=config, overrides=chunk_overrides)
        results.append(
            ChunkResult(
                since=a.isoformat(),
                until=b.isoformat(),
                status="done",
                mlflow_run_id=summary.mlflow_run_id,
                registered_version=summary.registered_version,
                reasons=summary.reasons,
            )
        )
    return results


def _finished_run(client, cfg, window: str):
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`r2w.window` = '{window}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None
