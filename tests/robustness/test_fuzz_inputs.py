"""Fuzzing every importer and the config loader with Hypothesis (issue 21, "make the classes testable").

Property, for every generated input: `r2w collect import` (JSONL and Parquet trace files) exits 0, or
exits 2 with each error line naming the file, the record (or `file`) and a field; never a traceback
or another exit code; on exit 2 nothing under the data dir changed (sha256 of the whole tree); on
exit 0 what was stored loads back and carries no planted secret. Every error text is free of the
planted secrets. The config loader returns a config or a ConfigError naming the file.

MLflow traces (offline, SQLite): arbitrary span inputs, outputs, usage attributes, status messages and
feedback values; the importer returns valid episodes, and what it stores is scrubbed.

Deterministic: `derandomize=True` (same cases every run, no example database). Each test prints its
case count (jsonl 120, parquet 80, config 150, mlflow 12). Runtime on a loaded 2-core box: about
60-80 s for the whole module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from robust_helpers import API_KEY, EMAIL, REPO, played_failures, tree_digest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
SECRETS = (API_KEY, EMAIL)
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS: dict[str, int] = {}
LIMIT = {"max_record_bytes": 4096}  # small, so generated records cross it


@pytest.fixture(scope="module")
def base_record() -> dict:
    return played_failures()[0].model_dump(mode="json")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data dir that already holds an imported dataset (so 'nothing changed' means something)."""
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data"
    cfg = root / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump({"name": "fuzz", "data_dir": str(data), "registry": {"experiment": "fuzz"}, "collect": LIMIT})
    )
    seed = root / "seed.jsonl"
    seed.write_text(json.dumps(played_failures()[1].model_dump(mode="json")) + "\n")
    result = runner.invoke(app, ["collect", "import", str(seed), "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    return root, data, cfg


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown with -q too: the case counts are part of the result
        for name, n in COUNTS.items():
            print(f"\nfuzz {name}: {n} cases", end="")
        print()


# ---------------------------------------------------------------- strategies


def _text(specials: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.characters(codec="utf-8").map(str) | st.sampled_from(specials), max_size=12).map("".join)


MARKUP = ["[/]", "[link=http://x]", ":smile:", "\\", "\x00", "\x1b[31m"]
TEXT = _text([*MARKUP, "\ud800"])  # a lone surrogate: JSON can carry one, UTF-8 cannot
CLEAN_TEXT = _text(MARKUP)  # what a UTF-8 store (MLflow) can hold
PLANTED_TEXT = st.sampled_from([f"key {API_KEY}", f"mail {EMAIL}", "[/]", "[bold]x[/bold]", ":warning:"])


def _jsonish(text: st.SearchStrategy[str]) -> st.SearchStrategy:
    scalar = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | text
        | PLANTED_TEXT
        | st.sampled_from(["9999-12-31T00:00:00", "2026-11-01", "0001-01-01T00:00:00+14:00", "yesterday"])
    )
    return st.recursive(
        scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8
    )


JSONISH = _jsonish(TEXT)
CLEAN_JSONISH = _jsonish(CLEAN_TEXT)
SAFE_KEY = st.text(st.sampled_from("abcxyz[]/=:_- "), min_size=1, max_size=12)


def _paths(value, path=()):
    """Every (path to a value) inside a JSON-like record: where a mutation can land."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _mutate(record: dict, draw) -> dict:
    record = json.loads(json.dumps(record))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(record) if p]
        kind = draw(st.sampled_from(["replace", "delete", "add_key", "plant"]))
        target = draw(st.sampled_from(paths))
        parent = record
        for key in target[:-1]:
            parent = parent[key]
        if kind == "replace":
            parent[target[-1]] = draw(JSONISH)
        elif kind == "delete":
            del parent[target[-1]]
        elif kind == "add_key" and isinstance(parent, dict):
            parent[draw(SAFE_KEY | TEXT | PLANTED_TEXT)] = draw(JSONISH)
        elif kind == "plant" and isinstance(parent[target[-1]], str):
            parent[target[-1]] = parent[target[-1]] + " " + draw(PLANTED_TEXT)
    return record


@st.composite
def jsonl_files(draw, base: dict) -> bytes:
    """A JSONL trace file: valid records, mutated records, raw garbage lines, truncations, deep nesting."""
    lines: list[bytes] = []
    for i in range(draw(st.integers(0, 4))):
        record = {**base, "episode_id": f"fz-{i}"}
        kind = draw(st.sampled_from(["valid", "mutated", "mutated", "garbage", "truncated", "deep", "blank"]))
        if kind == "valid":
            lines.append(json.dumps(record).encode())
        elif kind == "mutated":
            text = json.dumps(_mutate(record, draw), ensure_ascii=draw(st.booleans()))
            lines.append(text.encode("utf-8", "surrogatepass"))
        elif kind == "garbage":
            lines.append(draw(st.binary(max_size=40)).replace(b"\n", b" "))
        elif kind == "truncated":
            text = json.dumps(record)
            lines.append(text[: draw(st.integers(0, len(text) - 1))].encode())
        elif kind == "deep":
            lines.append(b"[" * draw(st.integers(900, 5000)))
        else:
            lines.append(b"   ")
    return b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"\r\n"]))


# ---------------------------------------------------------------- the property


def check_import(path: Path, workspace) -> None:
    """Run `r2w collect import` on one generated file and assert the property (module docstring)."""
    root, data, cfg = workspace
    before = tree_digest(data)
    result = runner.invoke(app, ["collect", "import", str(path), "-c", str(cfg)])
    _count(f"{path.suffix[1:]} exit {result.exit_code}")
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert not [s for s in SECRETS if s in result.output], result.output
    if result.exit_code == 2:
        assert tree_digest(data) == before, "a failed import changed the data dir"
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith(str(path))]
        assert errors, result.output
        for line in errors:
            rest = line[len(str(path)) :]
            assert re.match(r"^: (record [1-9]\d*|file): .+: .+", rest), line
        return
    _check_stored(data)


def _check_stored(data: Path) -> None:
    """Every stored dataset loads back (content hash verified) and holds no planted secret."""
    from robust_helpers import secrets_sweep

    from r2w.contracts import Episode
    from r2w.datasets import load_records

    for manifest in (data / "datasets").rglob("manifest.json"):
        load_records(manifest.parent, Episode)
    assert secrets_sweep(SECRETS, data / "datasets") == {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


# ---------------------------------------------------------------- importers


def test_fuzz_jsonl_import(base_record, workspace):
    root, _, _ = workspace

    @settings(FUZZ, max_examples=120)
    @given(blob=jsonl_files(base_record))
    def run(blob: bytes) -> None:
        _count("jsonl")
        path = root / "case.jsonl"
        path.write_bytes(blob)
        check_import(path, workspace)

    run()


@st.composite
def parquet_files(draw, base: dict) -> tuple[list[dict], str, dict, tuple[int, bytes] | None]:
    records = []
    for i in range(draw(st.integers(1, 3))):
        record = {**base, "episode_id": f"fz-{i}"}
        records.append(_mutate(record, draw) if draw(st.booleans()) else record)
    layout = draw(st.sampled_from(["json", "columns"]))
    options = {
        "row_group_size": draw(st.sampled_from([1, 2, 1024])),
        "compression": draw(st.sampled_from(["NONE", "snappy", "zstd"])),
        "use_dictionary": draw(st.booleans()),
    }
    corrupt = None
    if draw(st.booleans()):
        corrupt = (draw(st.integers(0, 10**6)), draw(st.binary(min_size=1, max_size=16)))
    return records, layout, options, corrupt


def test_fuzz_parquet_import(base_record, workspace):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _, _ = workspace

    @settings(FUZZ, max_examples=80)
    @given(case=parquet_files(base_record))
    def run(case) -> None:
        records, layout, options, corrupt = case
        path = root / "case.parquet"
        try:
            if layout == "json":
                table = pa.table({"json": [json.dumps(r, ensure_ascii=False) for r in records]})
            else:
                rows = [{**r, "steps": json.dumps(r["steps"])} if "steps" in r else r for r in records]
                table = pa.Table.from_pylist(rows)
            pq.write_table(table, path, **options)
        except (pa.ArrowException, UnicodeEncodeError, OverflowError, TypeError):
            assume(False)  # records Arrow itself cannot write: not a file anyone can hand us
        if corrupt is not None:  # damage a data page, the footer or anything in between
            blob = bytearray(path.read_bytes())
            offset = corrupt[0] % len(blob)
            blob[offset : offset + len(corrupt[1])] = corrupt[1]
            path.write_bytes(bytes(blob))
        _count("parquet")
        check_import(path, workspace)

    run()


# ---------------------------------------------------------------- config loader


def _config_fields(model, prefix: str = ""):
    """Every dotted config field, found by walking the pydantic model."""
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _config_fields(ann, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_fuzz_config_loader(tmp_path):
    from r2w.config import ConfigError, R2WConfig, load_config

    fields = sorted(_config_fields(R2WConfig))
    base = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())

    @settings(FUZZ, max_examples=150)
    @given(
        edits=st.lists(st.tuples(st.sampled_from(fields) | SAFE_KEY, JSONISH), max_size=3),
        raw_text=st.none() | st.text(max_size=60),
    )
    def run(edits, raw_text) -> None:
        _count("config")
        path = tmp_path / "fuzz.yaml"
        if raw_text is not None:
            path.write_text(raw_text, encoding="utf-8", errors="surrogatepass")
        else:
            raw = json.loads(json.dumps(base))
            raw["data_dir"] = str(tmp_path / "data")
            for dotted, value in edits:
                node = raw
                *parents, leaf = dotted.split(".")
                for key in parents:
                    node = node.setdefault(key, {}) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node[leaf] = value
            try:
                path.write_text(yaml.safe_dump(raw, allow_unicode=True))
            except (yaml.YAMLError, UnicodeEncodeError):
                assume(False)
        try:
            load_config(path)
        except ConfigError as exc:
            text = str(exc)
            assert str(path) in text, text
            assert not [s for s in SECRETS if s in text], text

    run()


# ---------------------------------------------------------------- MLflow traces (offline, SQLite)


ROOT_KEY = SAFE_KEY | st.sampled_from(["task", "messages"])


@st.composite
def trace_specs(draw) -> list[dict]:
    """Agent traces as an agent might log them: any inputs, outputs, attributes, status and feedback."""
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        specs.append(
            {
                "name": draw(SAFE_KEY | PLANTED_TEXT),
                "inputs": draw(st.dictionaries(ROOT_KEY, CLEAN_JSONISH, max_size=3)),
                "outputs": draw(CLEAN_JSONISH),
                "children": [
                    {
                        "inputs": draw(st.dictionaries(SAFE_KEY | st.just("messages"), CLEAN_JSONISH, max_size=2)),
                        "outputs": draw(CLEAN_JSONISH),
                        "attributes": {"mlflow.chat.tokenUsage": draw(CLEAN_JSONISH)},
                    }
                    for _ in range(draw(st.integers(0, 2)))
                ],
                "error": draw(st.none() | PLANTED_TEXT | CLEAN_TEXT),
                "feedback": draw(st.none() | CLEAN_JSONISH),
            }
        )
    return specs


def test_fuzz_mlflow_import(tmp_path):
    """Failed MLflow traces with arbitrary span inputs/outputs/attributes: import_mlflow_traces returns
    valid Episodes or raises a ValueError naming the trace; what is stored is scrubbed."""
    import itertools

    import mlflow
    from mlflow.entities import SpanStatusCode

    from r2w.config import load_config
    from r2w.traces import ImportStats, import_mlflow_traces, save_imported

    uri = f"sqlite:///{tmp_path / 'agent.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    counter = itertools.count()
    cfg = load_config("test", {"data_dir": str(tmp_path / "data"), "registry": {"experiment": "fuzz-mlflow"}})
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"tracking_uri": uri})})

    @settings(FUZZ, max_examples=12)
    @given(specs=trace_specs())
    def run(specs) -> None:
        _count("mlflow")
        experiment = f"agent-{next(counter)}"
        mlflow.set_experiment(experiment)
        for spec in specs:
            with mlflow.start_span(name=spec["name"]) as root:
                root.set_inputs(spec["inputs"])
                for child in spec["children"]:
                    with mlflow.start_span(name="step") as span:
                        span.set_inputs(child["inputs"])
                        span.set_attributes(child["attributes"])
                        span.set_outputs(child["outputs"])
                root.set_outputs(spec["outputs"])
                if spec["error"] is not None:
                    root.set_status(SpanStatusCode.ERROR)
                    root.status.description = spec["error"]
            trace_id = mlflow.get_last_active_trace_id()
            if spec["feedback"] is not None:
                mlflow.log_feedback(trace_id=trace_id, name="correct", value=spec["feedback"])
        stats = ImportStats()
        try:
            episodes = import_mlflow_traces(uri, experiment, stats=stats)
        except ValueError as exc:
            assert experiment in str(exc) and not [s for s in SECRETS if s in str(exc)], str(exc)
            return
        assert stats.records == len(specs)
        if episodes:
            ref, _ = save_imported(cfg, episodes, stats)
            from robust_helpers import secrets_sweep

            assert secrets_sweep(SECRETS, Path(ref.path)) == {}

    try:
        run()
    finally:
        mlflow.set_tracking_uri(previous)
