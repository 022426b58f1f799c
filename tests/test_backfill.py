"""Backfill over a past window from a real trace file: one retrain subflow per chunk, and a
rerun of the finished window does no work."""

from __future__ import annotations

from datetime import UTC, datetime


def test_backfill_runs_each_chunk_once(tmp_path):
    from evaluation.environments import make_environment
    from flows.backfill import backfill
    from r2w.config import load_config
    from r2w.rollout import RandomPolicy, run_episodes

    cfg = load_config("test")
    factory = make_environment(cfg.env)
    played = run_episodes(factory, [(t, 0) for t in factory.tasks("train", 6)], RandomPolicy(1), 4, batch_size=6)
    day1 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    failures = [e.model_copy(update={"created_at": day1}) for e in played if not e.success]
    assert failures, "random play on 4 steps should fail some games"
    traces = tmp_path / "agent-traces.jsonl"
    traces.write_text("".join(e.model_dump_json() + "\n" for e in failures))

    overrides = {"data_dir": str(tmp_path), "collect": {"source": "traces", "trace_paths": [str(traces)]}}
    first = backfill("2026-11-01", "2026-11-03", 24, config="test", overrides=overrides)
    assert [r.status for r in first] == ["done", "done"]
    assert first[0].since.startswith("2026-11-01") and first[1].since.startswith("2026-11-02")
    assert first[1].reasons and first[1].reasons[0].startswith("skipped: no failures in 2026-11-02")
    assert first[0].reasons != first[1].reasons

    again = backfill("2026-11-01", "2026-11-03", 24, config="test", overrides=overrides)
    assert [r.status for r in again] == ["skipped-done", "skipped-done"]
    assert [r.mlflow_run_id for r in again] == [r.mlflow_run_id for r in first]


def test_backfill_rejects_rollout_source_and_bad_window(tmp_path):
    import pytest

    from flows.backfill import backfill, chunk_window

    with pytest.raises(ValueError, match="collect.source must be"):
        backfill("2026-11-01", "2026-11-02", config="test", overrides={"data_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="must be after"):
        chunk_window(datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC), 24)
