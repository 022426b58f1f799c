"""Importers of agents' own logs (issue 23.1): sample files written from each format's documentation,
all from one tool-calling agent (get_weather, answered in Fahrenheit when Celsius was asked).

Each imports to Episodes with every turn and tool call kept; each malformed variant exits 2 naming
the file, the record and the field, and stores nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from r2w.contracts import Episode
from r2w.datasets import load_records
from r2w.importers.common import read_records
from r2w.importers.files import detect, first_record, import_file, load_outcomes
from r2w.traces import ImportStats

DATA = Path(__file__).parent / "data" / "traces"
SAMPLES = {
    "openai": "openai_chat.jsonl",
    "otel": "otel_genai.json",
    "mlflow": "mlflow_traces.jsonl",
    "langsmith": "langsmith_runs.jsonl",
    "langfuse": "langfuse_traces.json",
}
runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: importers\ndata_dir: {tmp_path / 'data'}\nregistry: {{experiment: importers-test}}\n")
    return cfg


def _stored(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "datasets" / "failures").glob("*/manifest.json"))


def _weather_episode(ep: Episode) -> None:
    """The agent's failed episode, every turn and call kept, whatever format it came through."""
    assert ep.task == "What's the weather in Paris?" and not ep.success and ep.verdict_by
    assert [s.index for s in ep.steps] == [0, 1]
    first, last = ep.steps
    assert [m.role for m in first.prompt] == ["system", "user"]
    assert first.prompt[0].content == "You are a weather assistant. Answer in Celsius."
    (call,) = first.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert first.action == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    (result,) = first.tool_results
    assert (result.role, result.tool_call_id, result.content) == ("tool", call.id, "rainy, 57°F")
    assert result.name == "get_weather"
    assert [m.role for m in last.prompt] == ["system", "user", "assistant", "tool"]
    assert last.prompt[2].tool_calls[0].id == call.id
    assert last.response == last.action == "It is rainy and 57°F in Paris." and not last.tool_calls
    assert [t["function"]["name"] for t in ep.tools] == ["get_weather"]
    assert ep.tools[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_each_format_imports_every_turn_and_tool_call(fmt):
    path = DATA / SAMPLES[fmt]
    assert detect(first_record(path, 2**20)) == fmt
    known, errors = load_outcomes(DATA / "openai_outcomes.jsonl")
    assert errors == []
    stats = ImportStats()
    episodes, errors = import_file(path, stats=stats, outcomes=known)
    assert errors == []
    assert all(e.source == fmt and e.env and e.task_id.startswith(fmt) for e in episodes)
    weather = [e for e in episodes if e.task.startswith("What's the weather")]
    assert len(weather) == 1
    _weather_episode(weather[0])
    assert import_file(path, fmt, outcomes=known)[0] == episodes  # --format gives the same as detection
    if fmt in ("otel", "langsmith", "langfuse"):  # token counts from the model-call spans/runs
        assert [(s.prompt_tokens, s.completion_tokens) for s in weather[0].steps] == [(61, 15), (90, 12)]


def test_openai_outcomes_arguments_and_window():
    known, _ = load_outcomes(DATA / "openai_outcomes.jsonl")
    stats = ImportStats()
    episodes, errors = import_file(DATA / "openai_chat.jsonl", stats=stats, outcomes=known)
    assert errors == [] and (stats.records, stats.failures, stats.skipped_success) == (3, 2, 1)
    rome = next(e for e in episodes if e.task_id == "openai/conv-003")
    assert rome.outcome == "forgot Oslo" and rome.verdict_by == "outcomes-file:label"
    (turn, answer) = rome.steps
    # arguments given as objects are stored as JSON text; both parallel calls and both results kept
    assert [c.function.arguments for c in turn.tool_calls] == ['{"city": "Rome"}', '{"city": "Oslo"}']
    assert [r.content for r in turn.tool_results] == ["sunny, 20°C", "snow, -3°C"]
    assert turn.response == "Checking both." and answer.response == "Rome is sunny."
    # without the outcomes file, conv-003 states no outcome: an error naming it
    _, errors = import_file(DATA / "openai_chat.jsonl")
    assert [str(e) for e in errors] == [
        f"{DATA / 'openai_chat.jsonl'}: record 3: success: no outcome for 'conv-003': put success, label or score"
        " on the record, or list its id in an --outcomes file"
    ]
    assert import_file(DATA / "openai_chat.jsonl", outcomes=known, until="2026-11-01")[0] == []


def test_mlflow_expectations_are_kept_as_gold():
    (ep,), _ = import_file(DATA / "mlflow_traces.jsonl")
    assert ep.gold == {"expected_answer": "It is rainy and 14°C in Paris."}
    assert "correct=False" in ep.outcome and "Fahrenheit" in ep.outcome
    assert Episode.model_validate_json(ep.model_dump_json()) == ep
    assert "gold" not in Episode.model_validate({**ep.model_dump(), "gold": {}}).model_dump()  # old hashes kept


def test_json_array_and_pretty_printed_values_are_split_under_the_size_limit(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text('[\n {"a": "x,]}"},\n {"b": [1, {"c": "\\"q\\""}]}\n]\n')
    assert read_records(path, 100) == ([(1, {"a": "x,]}"}), (2, {"b": [1, {"c": '"q"'}]})], [])
    records, errors = read_records(path, 10)
    assert records == [] and [e.message.split(";")[0] for e in errors] == ["record is 13 bytes", "record is 26 bytes"]
    pretty = tmp_path / "two.json"
    pretty.write_text('{\n "a": 1\n}\n{"b": 2}\n')
    assert read_records(pretty, 100)[0] == [(1, {"a": 1}), (4, {"b": 2})]


def _lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _otel() -> dict:
    return json.loads((DATA / "otel_genai.json").read_text())


def _set_attr(span: dict, key: str, value: dict) -> None:
    span["attributes"] = [a for a in span["attributes"] if a["key"] != key] + [{"key": key, "value": value}]


def _bad_openai_args():
    rows = _lines("openai_chat.jsonl")[:1]
    rows[0]["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    return rows


def _bad_openai_role():
    rows = _lines("openai_chat.jsonl")[:2]
    rows[1]["messages"][0]["role"] = "robot"
    return rows


def _bad_otel_messages():
    export = _otel()
    _set_attr(export["resourceSpans"][0]["scopeSpans"][0]["spans"][1], "gen_ai.input.messages", {"stringValue": "[{"})
    return [export]


def _bad_otel_tool():
    export = _otel()
    _set_attr(export["resourceSpans"][0]["scopeSpans"][0]["spans"][2], "gen_ai.tool.name", {"intValue": "7"})
    return [export]


def _bad_mlflow():
    (trace,) = _lines("mlflow_traces.jsonl")
    del trace["info"]["trace_id"]
    return [trace]


def _bad_mlflow_span():
    (trace,) = _lines("mlflow_traces.jsonl")
    trace["data"]["spans"][1]["attributes"]["mlflow.spanInputs"] = json.dumps({"messages": [{"role": "robot"}]})
    return [trace]


def _bad_langsmith():
    rows = _lines("langsmith_runs.jsonl")
    rows[2]["start_time"] = "yesterday"
    return rows


def _bad_langsmith_feedback():
    rows = _lines("langsmith_runs.jsonl")
    rows[4]["run_id"] = "no-such-run"
    return rows


def _bad_langfuse():
    traces = json.loads((DATA / "langfuse_traces.json").read_text())
    traces[0]["observations"][1]["output"]["tool_calls"][0]["function"]["name"] = ""
    return traces


MALFORMED = [
    ("openai", "c.jsonl", _bad_openai_args, 1, "messages[2].tool_calls[0].function.arguments", "not valid JSON"),
    ("openai", "c.jsonl", _bad_openai_role, 2, "messages[0].role", "expected system"),
    ("otel", "o.jsonl", _bad_otel_messages, 1, "spans[1].attributes.gen_ai.input.messages", "expected JSON text"),
    ("otel", "o.jsonl", _bad_otel_tool, 1, "spans[2].attributes.gen_ai.tool.name", "tool's name"),
    ("mlflow", "m.jsonl", _bad_mlflow, 1, "info.trace_id", "expected a string"),
    ("mlflow", "m.jsonl", _bad_mlflow_span, 1, "data.spans[1].inputs.messages[0].role", "expected system"),
    ("langsmith", "l.jsonl", _bad_langsmith, 3, "start_time", "ISO 8601"),
    ("langsmith", "l.jsonl", _bad_langsmith_feedback, 5, "run_id", "no run with this id"),
    ("langfuse", "f.json", _bad_langfuse, 1, "observations[1].output.tool_calls[0].function.name", "tool's name"),
]


@pytest.mark.parametrize(("fmt", "file", "make", "record", "field", "words"), MALFORMED)
def test_malformed_records_name_file_record_field_store_nothing(tmp_path, fmt, file, make, record, field, words):
    path = tmp_path / file
    rows = make()
    if file.endswith(".json"):
        path.write_text(json.dumps(rows, indent=1))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    episodes, errors = import_file(path, fmt)
    assert episodes == [] and errors
    assert any(e.record == record and e.field.endswith(field) and words in e.message for e in errors), errors
    result = runner.invoke(app, ["collect", "import", str(path), "--format", fmt, "-c", str(_config(tmp_path))])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert f"record {record}:" in flat and field.split(".")[-1] in flat and path.name in flat
    assert _stored(tmp_path) == []


def test_cli_imports_every_format_and_rejects_bad_options(tmp_path):
    cfg = str(_config(tmp_path))
    files = [str(DATA / SAMPLES[f]) for f in sorted(SAMPLES)]
    outcomes = str(DATA / "openai_outcomes.jsonl")
    result = runner.invoke(app, ["collect", "import", *files, "--outcomes", outcomes, "-c", cfg])
    assert result.exit_code == 0, result.output
    (manifest,) = _stored(tmp_path)
    stored = load_records(manifest.parent, Episode)
    assert sorted(e.source for e in stored) == ["langfuse", "langsmith", "mlflow", "openai", "openai", "otel"]
    assert all(len(e.steps) == 2 and e.steps[0].tool_calls for e in stored)
    unknown = tmp_path / "x.jsonl"
    unknown.write_text('{"hello": "world"}\n')
    bad = runner.invoke(app, ["collect", "import", str(unknown), "-c", cfg])
    assert bad.exit_code == 2 and "record 1" in bad.output and "--format" in bad.output
    bad = runner.invoke(app, ["collect", "import", files[0], "--format", "csv", "-c", cfg])
    assert bad.exit_code == 2 and "--format" in bad.output
    missing = runner.invoke(app, ["collect", "import", files[0], "--outcomes", str(tmp_path / "nope"), "-c", cfg])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert len(_stored(tmp_path)) == 1


def test_oversized_and_secret_values_are_reported_without_parsing_or_leaking(tmp_path):
    key = "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
    rows = _lines("openai_chat.jsonl")[:1]
    rows[0]["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"api_key": "' + key + '", '
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(big) + "\n")
    _, errors = import_file(path, "openai", max_record_bytes=4096)
    text = "\n".join(str(e) for e in errors)
    assert key not in text and "record 1: messages[2]" in text
    assert "record 2: <record>: record is 5," in text and "collect.max_record_bytes" in text


@pytest.mark.parametrize("fmt", [None, "openai"])
def test_the_pipeline_collect_stage_reads_other_formats(tmp_path, fmt):
    """`collect.source: traces` goes through the same importers (format detected, or named by collect.trace_format)."""
    from r2w.config import load_config
    from r2w.datasets import load_records
    from tasks.collect import import_failures

    sample = Path(__file__).parent / "data" / "traces" / "openai_chat.jsonl"
    outcomes = str(Path(__file__).parent / "data" / "traces" / "openai_outcomes.jsonl")
    collect = {"source": "traces", "trace_paths": [str(sample)], "trace_format": fmt, "trace_outcomes": outcomes}
    cfg = load_config("test", {"data_dir": str(tmp_path), "collect": collect})
    result = import_failures(cfg)
    episodes = load_records(result.failures, Episode)
    assert episodes and any(s.tool_calls for e in episodes for s in e.steps)
