"""Importing failures from trace files (JSONL/Parquet) and from real MLflow traces."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from r2w.contracts import Episode, Message, Step
from r2w.datasets import load_records
from r2w.traces import ImportStats, import_mlflow_traces, import_trace_file

runner = CliRunner()


def _episode(i: int, success: bool = False, day: int = 10) -> dict:
    step = Step(
        index=0,
        observation="You are in the kitchen.",
        valid_actions=["open fridge", "look around"],
        prompt=[Message(role="user", content="Next action:")],
        response="open fridge",
        action="open fridge",
        prompt_tokens=12,
        completion_tokens=3,
    )
    ep = Episode(
        episode_id=f"ext-{i}",
        env="twx",
        category="twc",
        task_id=f"twx/twc/train/{i}",
        split="train",
        seed=i,
        task="Tidy up the kitchen.",
        steps=[step],
        success=success,
        outcome="success" if success else "step limit",
        policy="prod-agent",
        created_at=datetime(2026, 11, day, 12, 0, tzinfo=UTC),
    )
    return ep.model_dump(mode="json")


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _config(tmp_path: Path, tracking_uri: str | None = None) -> Path:
    cfg = tmp_path / "cfg.yaml"
    uri = f", tracking_uri: '{tracking_uri}'" if tracking_uri else ""
    cfg.write_text(f"name: traces\ndata_dir: {tmp_path / 'data'}\nregistry: {{experiment: traces-test{uri}}}\n")
    return cfg


def _stored(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "datasets" / "failures").glob("*/manifest.json"))


def test_valid_jsonl_keeps_failures_in_the_window(tmp_path):
    records = [_episode(1), _episode(2, success=True), _episode(3, day=1), _episode(4, day=20)]
    path = _write_jsonl(tmp_path / "t.jsonl", records)
    stats = ImportStats()
    episodes, errors = import_trace_file(path, since="2026-11-05", until="2026-11-15", stats=stats)
    assert errors == []
    assert [e.episode_id for e in episodes] == ["ext-1"]
    assert episodes[0].source == "trace-file" and episodes[0].steps[0].prompt_tokens == 12
    assert (stats.records, stats.failures, stats.skipped_success, stats.skipped_window) == (4, 1, 1, 2)
    everything, _ = import_trace_file(path)
    assert sorted(e.episode_id for e in everything) == ["ext-1", "ext-3", "ext-4"]


def test_parquet_with_json_column_and_with_field_columns(tmp_path):
    records = [_episode(1), _episode(2)]
    as_json = tmp_path / "json.parquet"
    pq.write_table(pa.table({"json": [json.dumps(r) for r in records]}), as_json)
    columns = tmp_path / "cols.parquet"
    rows = [{**r, "steps": json.dumps(r["steps"]), "hint_ids": r["hint_ids"]} for r in records]
    pq.write_table(pa.Table.from_pylist(rows), columns)
    for path in (as_json, columns):
        episodes, errors = import_trace_file(path)
        assert errors == [], path
        assert [e.episode_id for e in episodes] == ["ext-1", "ext-2"]
        assert episodes[0].steps[0].action == "open fridge"


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ({**_episode(2), "seed": "seven"}, "seed", "integer"),
        ({k: v for k, v in _episode(2).items() if k != "task"}, "task", "required"),
        ({k: v for k, v in _episode(2).items() if k != "created_at"}, "created_at", "required"),
        ({**_episode(2), "steps": [{**_episode(2)["steps"][0], "action": 5}]}, "steps[0].action", "string"),
        ({**_episode(2), "colour": "red"}, "colour", "not permitted"),
        ('{"episode_id": "x", ', "<record>", "not valid JSON"),
        ("[1, 2]", "<record>", "JSON object"),
    ],
)
def test_broken_record_names_file_record_and_field(tmp_path, line, field, words):
    path = _write_jsonl(tmp_path / "bad.jsonl", [_episode(1), line, _episode(3)])
    episodes, errors = import_trace_file(path)
    assert episodes == []  # nothing is imported from a file with an invalid record
    assert len(errors) == 1, errors
    err = errors[0]
    assert (err.file, err.record, err.field) == (str(path), 2, field)
    assert words in err.message
    assert str(path) in str(err) and "record 2" in str(err)
    kept, errors = import_trace_file(path, skip_invalid=True)
    assert [e.episode_id for e in kept] == ["ext-1", "ext-3"] and len(errors) == 1


def test_bad_utf8_and_empty_files(tmp_path):
    bad = tmp_path / "utf8.jsonl"
    bad.write_bytes(json.dumps(_episode(1)).encode() + b"\n" + b'{"task": "caf\xe9"}\n')
    episodes, errors = import_trace_file(bad)
    assert episodes == [] and [(e.record, e.field) for e in errors] == [(2, "<record>")]
    assert "UTF-8" in errors[0].message
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    episodes, errors = import_trace_file(empty)
    assert episodes == [] and "empty" in str(errors[0]) and str(empty) in str(errors[0])
    garbage = tmp_path / "x.parquet"
    garbage.write_text("not parquet")
    assert "Parquet" in str(import_trace_file(garbage)[1][0])


def test_cli_import_writes_nothing_on_errors_unless_skip_invalid(tmp_path):
    cfg = _config(tmp_path)
    path = _write_jsonl(
        tmp_path / "mixed.jsonl", [_episode(1), {**_episode(2), "seed": "x"}, _episode(3, success=True)]
    )
    result = runner.invoke(app, ["collect", "import", str(path), "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "record 2" in result.output and "seed" in result.output and "mixed.jsonl" in result.output
    assert _stored(tmp_path) == []

    result = runner.invoke(app, ["collect", "import", str(path), "--skip-invalid", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    (manifest,) = _stored(tmp_path)
    stored = load_records(manifest.parent, Episode)
    assert [e.episode_id for e in stored] == ["ext-1"]
    meta = json.loads(manifest.read_text())["meta"]
    assert meta["sources"] == [str(path)]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("traces-test")
    (run,) = client.search_runs([exp.experiment_id])
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == f"failures-{manifest.parent.name[:12]}"
    assert json.loads(manifest.read_text())["hash"].startswith(inp.dataset.digest)
    assert run.data.metrics["collect.failures"] == 1 and run.data.metrics["collect.invalid"] == 1


@pytest.fixture
def agent_tracking(tmp_path):
    """The 'production agent' logs to its own SQLite store; global MLflow state is restored after."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'agent.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("agent-prod")
    yield uri
    mlflow.set_tracking_uri(previous)


def test_real_mlflow_traces_error_and_failing_feedback_only(tmp_path, agent_tracking):
    import mlflow

    uri = agent_tracking

    @mlflow.trace(name="agent_episode")
    def episode(task: str, fail: bool) -> str:
        step("look around", task)
        step("open fridge", task)
        if fail:
            raise RuntimeError("ran out of steps")
        return "done"

    @mlflow.trace(span_type="TOOL")
    def step(action: str, observation: str) -> str:
        return f"you {action}"

    ids = {}
    for name, fail in [("error", True), ("bad-feedback", False), ("good-feedback", False), ("ok", False)]:
        try:
            episode(f"task {name}", fail)
        except RuntimeError:
            pass
        ids[name] = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()
    mlflow.log_feedback(trace_id=ids["bad-feedback"], name="correct", value=False, rationale="put it in the oven")
    mlflow.log_feedback(trace_id=ids["good-feedback"], name="correct", value=True)

    stats = ImportStats()
    episodes = import_mlflow_traces(uri, "agent-prod", stats=stats)
    by_task = {e.task: e for e in episodes}
    assert sorted(by_task) == ["task bad-feedback", "task error"]
    err, fb = by_task["task error"], by_task["task bad-feedback"]
    assert "ERROR" in err.outcome and "ran out of steps" in err.outcome
    assert "correct=False" in fb.outcome and "oven" in fb.outcome
    assert [s.action for s in fb.steps] == ["you look around", "you open fridge"]
    assert all(e.source == "mlflow-trace" and not e.success for e in episodes)
    assert stats.records == 4 and stats.skipped_success == 2

    # the window is on the trace's start time: a window in the past selects nothing
    assert import_mlflow_traces(uri, "agent-prod", until="2020-01-01") == []
    assert len(import_mlflow_traces(uri, "agent-prod", since=err.created_at.isoformat())) == 2

    cfg = _config(tmp_path, tracking_uri=uri)  # one SQLite store for the traces and r2w's run (each costs ~8 s)
    result = runner.invoke(
        app, ["collect", "mlflow", "--experiment", "agent-prod", "--tracking-uri", uri, "--config", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    (manifest,) = _stored(tmp_path)
    assert sorted(e.task for e in load_records(manifest.parent, Episode)) == ["task bad-feedback", "task error"]
    missing = runner.invoke(app, ["collect", "mlflow", "--experiment", "nope", "--tracking-uri", uri, "-c", str(cfg)])
    assert missing.exit_code == 2 and "nope" in missing.output
