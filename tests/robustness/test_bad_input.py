"""Bad input: one clear error naming the file/field/value and what was expected, the documented exit
code, and nothing already stored (datasets, hints, registry) modified or half-written."""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from robust_helpers import REPO, played_failures, write_traces
from typer.testing import CliRunner

from flows.cli import app
from r2w.config import ConfigError, load_config

runner = CliRunner()
MODEL = "r2w-badinput-student"


@pytest.fixture(scope="module")
def stocked(tmp_path_factory):
    """A data dir that already holds a failures dataset, curated hints and a registered version."""
    from r2w.datasets import save_records
    from r2w.hintstore import HintStore
    from r2w.tracking import client_for, start_run

    data = tmp_path_factory.mktemp("stocked")
    cfg = load_config("test", {"data_dir": str(data), "registry": {"model_name": MODEL}})
    failures = played_failures(4)
    save_records(failures, data / "datasets", "failures", {"seeded": True})
    HintStore(cfg.hints, data).import_jsonl(REPO / "configs" / "hints" / "twc_curated.jsonl", "curated")
    client = client_for(cfg)
    run_id = start_run(client, cfg, "seed-version")
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=str(data), run_id=run_id, tags={"r2w.gate": "passed"})
    client.set_registered_model_alias(MODEL, "challenger", version.version)
    return data, failures


def snapshot(data: Path) -> dict:
    """What a failed command must leave as it was: dataset files, hints, registry versions and aliases."""
    from r2w.hintstore import HintStore
    from r2w.tracking import client_for

    cfg = load_config("test", {"data_dir": str(data), "registry": {"model_name": MODEL}})
    files = {
        str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((data / "datasets").rglob("*"))
        if p.is_file()
    }
    hints = [h.model_dump_json() for h in HintStore(cfg.hints, data).list()]
    client = client_for(cfg)
    versions = [(str(v.version), dict(v.tags)) for v in client.search_model_versions(f"name='{MODEL}'")]
    aliases = dict(client.get_registered_model(MODEL).aliases)
    return {"files": files, "hints": hints, "versions": versions, "aliases": aliases}


def _config(data: Path, tmp: Path, **sections) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(data)
    raw["registry"]["model_name"] = MODEL
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("gate: {max_kl: 0.5, max_kll: 1}\n", "gate.max_kll"),  # unknown key
        ("teach: {samples: many}\n", "teach.samples"),  # wrong type
        ("gate: {max_kl: -1}\n", "gate.max_kl"),  # impossible threshold
        ("gate: {min_gain_over_base: 1.5}\n", "gate.min_gain_over_base"),
        ("gate: {hint_harm_alpha: 0.9}\n", "gate.hint_harm_alpha"),
        ("collect: {source: traces, trace_paths: [x], since: '2026-11-05', until: '2026-11-01'}\n", "collect.until"),
        ("collect: {since: 'last tuesday'}\n", "collect.since"),
        ("privacy: {patterns: {badge: 'EMP-(\\\\d'}}\n", "privacy.patterns.badge"),  # not a regex
        ("privacy: {patterns: {anything: '.*'}}\n", "privacy.patterns.anything"),  # matches the empty string
        ("privacy: {canaries: [{prefix: key is, secret: short}]}\n", "privacy.canaries.0.secret"),
        ("hints: {screen_denylist: ['(unclosed']}\n", "hints.screen_denylist[0]"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_invalid_config_names_file_and_field_and_exits_2(tmp_path, yaml_text, named):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    with pytest.raises(ConfigError, match=r"bad\.yaml") as err:
        load_config(bad)
    assert named in str(err.value), str(err.value)
    result = runner.invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2 and named in result.output and "bad.yaml" in result.output, result.output


def test_missing_model_path_is_named_and_exits_2(stocked, tmp_path):
    data, _ = stocked
    before = snapshot(data)
    cfg = _config(data, tmp_path, models={"base": str(tmp_path / "no-such-model")})
    result = runner.invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "models.base" in result.output and "no-such-model" in result.output and "config.json" in result.output
    assert snapshot(data) == before


# ---------------------------------------------------------------- trace files


def _good(n: int = 2) -> list[str]:
    """n valid failure records (random play fails most 4-step games: play 3n to be sure)."""
    records = [e.model_dump_json() for e in played_failures(3 * n)][:n]
    assert len(records) == n
    return records


def _import(path: Path, data: Path):
    """`r2w collect import` into the stocked data dir (the same importer `r2w run` uses)."""
    return runner.invoke(app, ["collect", "import", str(path), "--config", str(_config(data, path.parent))])


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong_type", "record 2: seed: Input should be a valid integer"),
        ("missing_field", "record 2: task: field required"),
        ("truncated", "record 2: <record>: not valid JSON"),
        ("bad_utf8", "record 2: <record>: not valid UTF-8"),
        ("empty", "file: -: no records (empty file)"),
        ("not_an_object", "record 2: <record>: expected a JSON object"),
    ],
)
def test_bad_trace_file_is_named_exits_2_and_stores_nothing(stocked, tmp_path, case, named):
    data, _ = stocked
    good = _good()
    record = json.loads(good[1])
    lines: list[bytes] = {
        "wrong_type": [good[0].encode(), json.dumps({**record, "seed": "seven"}).encode()],
        "missing_field": [good[0].encode(), json.dumps({k: v for k, v in record.items() if k != "task"}).encode()],
        "truncated": [good[0].encode(), good[1][: len(good[1]) // 2].encode()],
        "bad_utf8": [good[0].encode(), good[1].encode().replace(b'"task"', b'"ta\xffsk"', 1)],
        "empty": [],
        "not_an_object": [good[0].encode(), b"[1, 2, 3]"],
    }[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    before = snapshot(data)
    result = _import(path, data)
    assert result.exit_code == 2, result.output
    assert f"{path}: {named}" in result.output, result.output
    assert snapshot(data) == before


def test_100mb_record_is_refused_by_size_without_parsing(stocked, tmp_path):
    data, _ = stocked
    good = _good(1)[0]
    record = json.loads(good)
    path = tmp_path / "huge.jsonl"
    with path.open("w") as fh:
        fh.write(good + "\n")
        fh.write(json.dumps({**record, "episode_id": "huge", "task": "x" * (100 * 2**20)}) + "\n")
    before = snapshot(data)
    result = _import(path, data)
    assert result.exit_code == 2, result.output
    assert f"{path}: record 2: <record>: record is 104,8" in result.output
    assert "the limit is 8,388,608 (collect.max_record_bytes)" in result.output
    assert snapshot(data) == before


def test_bad_trace_inside_a_run_exits_2_and_marks_the_run_failed(stocked, tmp_path):
    from r2w.tracking import client_for

    data, _ = stocked
    good = _good()
    path = tmp_path / "bad.jsonl"
    path.write_text(good[0] + "\n" + json.dumps({**json.loads(good[1]), "seed": "seven"}) + "\n")
    before = snapshot(data)
    cfg = _config(data, tmp_path, collect={"source": "traces", "trace_paths": [str(path)]})
    result = runner.invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert f"{path}: record 2: seed" in result.output
    assert snapshot(data) == before
    client = client_for(load_config(str(cfg)))
    (run,) = client.search_runs(
        [client.get_experiment_by_name("r2w-test").experiment_id], "tags.`r2w.error` LIKE 'TraceImportError%'"
    )
    assert run.info.status == "FAILED"


# ---------------------------------------------------------------- empty inputs and unreachable stores


def test_empty_failure_set_stops_with_a_reason_and_registers_nothing(stocked, tmp_path):
    data, _ = stocked
    successes = [e.model_copy(update={"success": True}) for e in played_failures(2)]
    path = write_traces(tmp_path / "wins.jsonl", successes)
    before = snapshot(data)
    cfg = _config(data, tmp_path, collect={"source": "traces", "trace_paths": [str(path)]})
    result = runner.invoke(app, ["run", "--config", str(cfg), "--fail-on-gate"])
    assert result.exit_code == 0, result.output  # nothing to learn is not an error: documented exit 0
    assert "skipped: no failures" in result.output and "nothing registered" in result.output
    after = snapshot(data)
    assert after["hints"] == before["hints"] and after["versions"] == before["versions"]
    assert after["aliases"] == before["aliases"]


def test_empty_hint_store_stops_naming_the_store(tmp_path):
    from flows.retrain import retrain

    path = write_traces(tmp_path / "fails.jsonl", played_failures(3))
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "collect": {"source": "traces", "trace_paths": [str(path)]},
        "hints": {"curated_packs": [], "max_failures": 0, "collection": "empty-hints"},
        "registry": {"model_name": "r2w-empty-hints"},
    }
    summary = retrain(config="test", overrides=overrides)
    assert summary.registered_version is None and "teach" not in summary.stage_states
    (reason,) = summary.reasons
    assert "has no active hints" in reason and "empty-hints" in reason and "hints.curated_packs" in reason


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hint_store_exits_4_naming_the_url(stocked, tmp_path):
    data, _ = stocked
    url = f"http://127.0.0.1:{_dead_port()}"
    before = snapshot(data)
    path = write_traces(tmp_path / "fails.jsonl", played_failures(2))
    cfg = _config(data, tmp_path, collect={"source": "traces", "trace_paths": [str(path)]}, hints={"chroma_url": url})
    result = runner.invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 4, result.output
    assert f"hints.chroma_url {url}: no Chroma server answered" in result.output
    listing = runner.invoke(app, ["hints", "list", "-c", "test", "--set", f"hints.chroma_url={url}"])
    assert listing.exit_code == 4 and "hints.chroma_url" in listing.output
    after = snapshot(data)
    assert after["hints"] == before["hints"] and after["versions"] == before["versions"]


def test_exit_3_when_the_gate_fails_with_fail_on_gate(robust_run):
    """Reuses the robust run's cache: only the gate re-runs, with an impossible KL threshold."""
    summary, config, _, _ = robust_run
    result = runner.invoke(app, ["run", "--config", str(config), "--fail-on-gate", "--set", "gate.max_kl=0"])
    assert result.exit_code == 3, result.output
    assert "kl_to_base" in result.output and "nothing registered" in result.output


# ---------------------------------------------------------------- issue 21: bad input, by class


def _records(n: int = 3) -> list[dict]:
    return [json.loads(r) for r in _good(n)]


def _parquet(path: Path, records: list[dict], layout: str, **kwargs) -> Path:
    """A Parquet trace file in one of the two documented layouts: a `json` column or field columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if layout == "json":
        table = pa.table({"json": [json.dumps(r) for r in records]})
    else:
        table = pa.Table.from_pylist([{**r, "steps": json.dumps(r["steps"])} for r in records])
    pq.write_table(table, path, **kwargs)
    return path


@pytest.mark.parametrize("layout", ["json", "columns"])
@pytest.mark.parametrize("row_group_size", [1, 1024])  # footer metadata alone / streamed row by row
def test_100mb_parquet_record_is_refused_before_it_becomes_python(stocked, tmp_path, layout, row_group_size):
    """Issue 21.6: the record limit holds for Parquet; the value never becomes a Python string."""
    import tracemalloc

    from r2w.traces import import_trace_file

    data, _ = stocked
    good = _records(2)
    huge = {**good[1], "episode_id": "huge", "task": "x" * (100 * 2**20)}
    path = _parquet(tmp_path / "huge.parquet", [good[0], huge], layout, row_group_size=row_group_size)
    del huge
    assert path.stat().st_size < 10 * 2**20  # a small file holding a huge record
    tracemalloc.start()
    try:
        episodes, errors = import_trace_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert episodes == [] and [(e.record, e.field) for e in errors] == [(2, "<record>")], errors
    assert "the limit is 8,388,608 (collect.max_record_bytes)" in errors[0].message
    assert peak < 32 * 2**20, f"peak Python allocation {peak:,} bytes: the record was materialised"
    before = snapshot(data)
    result = _import(path, data)
    assert result.exit_code == 2 and f"{path}: record 2: <record>: record is" in result.output, result.output
    assert snapshot(data) == before


def _corrupt_page(path: Path, group: int, where: str) -> None:
    """Overwrite bytes of one row group's data page (header or payload); the footer stays intact."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(group).column(meta.num_columns - 1)
    blob = bytearray(path.read_bytes())
    first = column.dictionary_page_offset or column.data_page_offset
    start = column.data_page_offset if where == "header" else first + column.total_compressed_size - 10
    blob[start : start + 8] = b"\xff\xfe" * 4
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("layout", ["json", "columns"])
@pytest.mark.parametrize("where", ["header", "payload"])
def test_corrupt_parquet_data_page_is_named_and_exits_2(stocked, tmp_path, layout, where):
    """Issue 21.7: footer intact, one data page broken: exit 2 naming the file and the row group or
    record (never a traceback, never exit 1), and nothing stored."""
    data, _ = stocked
    path = _parquet(
        tmp_path / "pages.parquet", _records(3), layout, row_group_size=1, compression="NONE", use_dictionary=False
    )
    _corrupt_page(path, 1, where)
    before = snapshot(data)
    result = _import(path, data)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{path}: record 2: " in result.output, result.output
    assert "Traceback" not in result.output
    assert snapshot(data) == before


def test_trace_text_is_never_read_as_rich_markup(stocked, tmp_path):
    """Issue 21.8: a key named `[/]` crashed the error printer; `[link=...]` was rendered."""
    data, _ = stocked
    good = _good(2)
    record = {**json.loads(good[1]), "[/]": 1, "seed": "[link=https://evil.example]click[/link]"}
    path = tmp_path / "markup.jsonl"
    path.write_text(good[0] + "\n" + json.dumps(record) + "\n")
    before = snapshot(data)
    result = _import(path, data)
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{path}: record 2: [/]: Extra inputs are not permitted" in result.output, result.output
    assert "[link=https://evil.example]click" in result.output  # printed as text, not as a link
    assert snapshot(data) == before


def test_missing_curated_pack_is_a_config_error_before_anything_runs(stocked, tmp_path):
    """Issue 21.9: every path-typed config field is checked at load time: exit 2, not exit 1 after
    collect and two retries."""
    import time

    data, _ = stocked
    before = snapshot(data)
    traces = write_traces(tmp_path / "t.jsonl", played_failures(2))
    missing = str(tmp_path / "no-such-pack.jsonl")
    cfg = _config(
        data, tmp_path, collect={"source": "traces", "trace_paths": [str(traces)]}, hints={"curated_packs": [missing]}
    )
    with pytest.raises(ConfigError, match=r"hints\.curated_packs\[0\]: .*no-such-pack\.jsonl"):
        load_config(str(cfg))
    started = time.monotonic()
    result = runner.invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 2 and "hints.curated_packs[0]" in result.output, result.output
    assert time.monotonic() - started < 30  # no retry delays (5 s + 30 s)
    assert snapshot(data) == before


@pytest.mark.parametrize(
    ("section", "value", "named"),
    [
        ("hints", {"extractor": {"program": "missing/extractor.json"}}, "hints.extractor.program"),
        ("evaluate", {"kl_prompts": "configs/retention/missing.txt"}, "evaluate.kl_prompts"),
        ("evaluate", {"general_text": "reasoning_gym:no_such_text.txt"}, "evaluate.general_text"),
        ("evaluate", {"general_text": "no/such/prose.txt"}, "evaluate.general_text"),
        ("collect", {"source": "traces", "trace_paths": ["no-such-traces.jsonl"]}, "collect.trace_paths[0]"),
        ("models", {"teacher": "no/such/model"}, "models.teacher"),
    ],
)
def test_every_path_field_is_checked_when_the_config_loads(tmp_path, section, value, named):
    cfg = _config(tmp_path / "data", tmp_path, **{section: value})
    with pytest.raises(ConfigError, match="cfg.yaml") as err:
        load_config(str(cfg))
    assert named in str(err.value), str(err.value)


def test_path_fields_are_found_generically():
    """Every InputPath-marked field is one the loader checks: a new path field cannot be forgotten."""
    from r2w.config import InputPath, R2WConfig

    def marked(model, prefix=""):
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, __import__("pydantic").BaseModel):
                yield from marked(ann, f"{prefix}{name}.")
            elif any(isinstance(m, InputPath) for m in info.metadata):
                yield prefix + name

    assert set(marked(R2WConfig)) >= {
        "models.base", "models.teacher", "collect.trace_paths", "hints.curated_packs",
        "hints.extractor.program", "evaluate.kl_prompts", "evaluate.general_text",
    }  # fmt: skip


def test_bad_input_errors_are_never_retried():
    """A FileNotFoundError (a missing pack) is bad input: one attempt, no 5 s + 30 s of retries."""
    from prefect import flow, task

    from r2w.caching import retry_transient

    calls = {"missing": 0, "down": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def missing() -> None:
        calls["missing"] += 1
        raise FileNotFoundError("hints.curated_packs: x.jsonl not found")

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def down() -> None:
        calls["down"] += 1
        raise ConnectionResetError("server restarting")

    @flow
    def both() -> None:
        missing(return_state=True)
        down(return_state=True)

    both()
    assert calls == {"missing": 1, "down": 3}


def test_invalid_count_is_records_not_errors(tmp_path):
    from r2w.traces import ImportStats, TraceImportError, import_trace_file

    good = _good(2)
    two_bad_fields = {**json.loads(good[1]), "seed": "x", "split": 5}
    path = tmp_path / "two.jsonl"
    path.write_text(good[0] + "\n" + json.dumps(two_bad_fields) + "\n")
    stats = ImportStats()
    _, errors = import_trace_file(path, stats=stats)
    assert len(errors) == 2 and stats.invalid == 1
    assert str(TraceImportError(errors)).startswith("1 invalid record(s);")


def test_directory_and_missing_paths_are_named_for_what_they_are(tmp_path):
    from r2w.traces import import_trace_file

    folder = tmp_path / "traces.jsonl"
    folder.mkdir()
    (_, [err]) = import_trace_file(folder)
    assert "is a directory" in err.message and str(folder) in str(err)
    (_, [err]) = import_trace_file(tmp_path / "nope.jsonl")
    assert err.message == "no such file"


def test_errors_go_to_stderr_and_results_to_stdout(stocked, tmp_path):
    data, _ = stocked
    good = _good(2)
    path = tmp_path / "bad.jsonl"
    path.write_text(good[0] + "\n" + json.dumps({**json.loads(good[1]), "seed": "x"}) + "\n")
    result = _import(path, data)
    assert result.exit_code == 2
    assert "record 2: seed" in result.stderr and "record 2" not in result.stdout


def test_skip_invalid_never_skips_a_mistyped_path(stocked, tmp_path):
    data, _ = stocked
    before = snapshot(data)
    cfg = _config(data, tmp_path)
    for bad in (tmp_path / "typo.jsonl", tmp_path):
        result = runner.invoke(app, ["collect", "import", str(bad), "--skip-invalid", "--config", str(cfg)])
        assert result.exit_code == 2 and str(bad) in result.output, result.output
    assert snapshot(data) == before


def test_import_of_zero_failures_writes_nothing(stocked, tmp_path):
    data, _ = stocked
    wins = write_traces(tmp_path / "wins.jsonl", [e.model_copy(update={"success": True}) for e in played_failures(2)])
    before = snapshot(data)
    runs_before = _runs(data)
    result = _import(wins, data)
    assert result.exit_code == 0 and "nothing written" in result.output, result.output
    assert snapshot(data) == before and _runs(data) == runs_before


def _runs(data: Path) -> int:
    from r2w.tracking import client_for

    client = client_for(load_config("test", {"data_dir": str(data)}))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments)) if experiments else 0


def test_reused_dataset_records_every_import(tmp_path):
    """The same failures imported from two files in two windows: one content-addressed folder, and
    its manifest lists both imports."""
    good = _records(2)
    first = tmp_path / "a.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in good))
    second = tmp_path / "b.jsonl"
    second.write_text(first.read_text())
    cfg = _config(tmp_path / "data", tmp_path)
    for path, since in ((first, "2026-01-01"), (second, "2026-02-01")):
        args = ["collect", "import", str(path), "--since", since, "--config", str(cfg)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    (manifest,) = (tmp_path / "data" / "datasets" / "failures").glob("*/manifest.json")
    imports = json.loads(manifest.read_text())["imports"]
    assert [i["sources"] for i in imports] == [[str(first)], [str(second)]]
    assert [i["window"]["since"][:10] for i in imports] == ["2026-01-01", "2026-02-01"]


@pytest.mark.parametrize("command", ["import", "mlflow"])
def test_inverted_window_exits_2(tmp_path, command):
    cfg = _config(tmp_path / "data", tmp_path)
    target = ["import", str(write_traces(tmp_path / "t.jsonl", played_failures(2)))]
    if command == "mlflow":
        target = ["mlflow", "--experiment", "anything"]
    result = runner.invoke(
        app, ["collect", *target, "--since", "2026-11-05", "--until", "2026-11-01", "--config", str(cfg)]
    )
    assert result.exit_code == 2 and "--until" in result.output, result.output


def test_created_at_in_the_future_is_rejected(tmp_path):
    from r2w.traces import import_trace_file

    good = _records(3)
    good[1]["created_at"] = "9999-12-31T00:00:00"
    good[2]["created_at"] = datetime.now(UTC).isoformat()  # now is fine (clock skew allowance)
    path = tmp_path / "future.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    episodes, errors = import_trace_file(path)
    assert [(e.record, e.field) for e in errors] == [(2, "created_at")], errors
    assert "in the future" in errors[0].message and "9999" in errors[0].message


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "import", "x.jsonl"],
        ["collect", "mlflow", "--experiment", "x"],
        ["promote", "1", "--by", "me", "--reason", "ok"],
        ["rollback", "--by", "me", "--reason", "ok"],
    ],
)
def test_set_is_accepted_by_every_config_command(tmp_path, args):
    """--set overrides reach the config: a bad override is a config error naming it (exit 2)."""
    result = runner.invoke(app, [*args, "-c", "test", "--set", "gate.max_kl=-1"])
    assert result.exit_code == 2 and "gate.max_kl" in result.output, result.output


def test_run_summary_shows_each_stage_state():
    from flows.retrain import RunSummary

    summary = RunSummary(mlflow_run_id="r", config="c", stage_states={"collect": "Cached", "train": "Completed"})
    result = CliRunner().invoke(typer_app_printing(summary), [])
    assert "collect Cached" in result.output and "train Completed" in result.output, result.output


def typer_app_printing(summary):
    import typer

    from flows.cli import print_summary

    one = typer.Typer()

    @one.command()
    def show() -> None:
        print_summary(summary)

    return one


def test_long_keys_are_shortened_and_a_bom_is_accepted(tmp_path):
    from r2w.traces import import_trace_file

    good = _good(2)
    path = tmp_path / "bom.jsonl"
    key = "k" * 10_000
    path.write_bytes(b"\xef\xbb\xbf" + good[0].encode() + b"\n" + json.dumps({**json.loads(good[1]), key: 1}).encode())
    _, errors = import_trace_file(path)
    assert [(e.record, len(e.field) <= 80, e.field[:3]) for e in errors] == [(2, True, "kkk")], errors
