"""Bad input: one clear error naming the file/field/value and what was expected, the documented exit
code, and nothing already stored (datasets, hints, registry) modified or half-written."""

from __future__ import annotations

import hashlib
import json
import socket
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
