"""Crashes: processes killed (os._exit, as SIGKILL: no cleanup) mid-write and at every stage boundary;
the rerun completes without duplicated hints, corrupted datasets, orphan registry versions or redone
stages. Kill points are armed by R2W_FAULT (r2w/faults.py). The kill in the middle of training is
tests/test_orchestration.py::test_killed_flow_resumes_from_first_unfinished_stage."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from robust_helpers import REPO, passing_report, played_failures, write_traces

from r2w.config import HintsConfig, load_config
from r2w.faults import FAULT_EXIT

CURATED = REPO / "configs" / "hints" / "twc_curated.jsonl"


def _api_env(**extra: str) -> dict[str, str]:
    """The test's environment plus the harness's Prefect API (no ephemeral server per subprocess)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1", **extra}


def _python(code: str, fault: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=_api_env(R2W_FAULT=fault),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _store_rows(store) -> list[tuple[str, str, str, int]]:
    return sorted((h.hint_id, h.category, h.text, h.support) for h in store.list())


def assert_no_duplicate_hints(store) -> None:
    hints = store.list()
    assert len({h.hint_id for h in hints}) == len(hints)
    keys = [(h.category, h.applicability.lower(), h.text.lower()) for h in hints]
    assert len(set(keys)) == len(keys), "one lesson stored twice"


def test_chroma_write_killed_midway_then_rerun_completes_without_duplicates(tmp_path):
    from r2w.hintstore import HintStore

    cfg = HintsConfig(collection="crash-hints")
    code = f"""
        from r2w.runtime import configure_environment
        configure_environment({str(tmp_path / "cache")!r})
        from r2w.config import HintsConfig
        from r2w.hintstore import HintStore
        HintStore(HintsConfig(collection="crash-hints"), {str(tmp_path)!r}).import_jsonl({str(CURATED)!r}, "curated")
        print("NOT KILLED")
    """
    proc = _python(code, "chroma_write:2")
    assert proc.returncode == FAULT_EXIT, proc.stderr[-2000:]
    assert "killed at chroma_write after 2 records" in proc.stderr
    store = HintStore(cfg, tmp_path)
    assert store.count() == 2  # the write really was cut in the middle

    store.import_jsonl(CURATED, "curated")  # the rerun
    clean = HintStore(cfg, tmp_path / "clean")
    clean.import_jsonl(CURATED, "curated")
    assert _store_rows(store) == _store_rows(clean)  # same hints, same support: nothing doubled or lost
    assert_no_duplicate_hints(store)


REGISTER = """
    from r2w.runtime import configure_environment
    configure_environment({data!r})
    from pathlib import Path
    from r2w.config import load_config
    from r2w.contracts import GateReport
    from r2w.tracking import client_for, start_run
    from tasks.register import register_student
    cfg = load_config("test", {{"data_dir": {data!r}, "registry": {{"model_name": "r2w-crash-student"}}}})
    report = GateReport.model_validate_json(Path({report!r}).read_text())
    run_id = start_run(client_for(cfg), cfg, "register-{student}")
    folder = Path({folder!r})
    reg = register_student(cfg, run_id, report, Path({report_dir!r}), folder, folder, {{"student": "{student}"}})
    print("REGISTERED", reg.version)
"""


def test_register_killed_between_version_and_alias_is_adopted_not_orphaned(tmp_path):
    from r2w.tracking import client_for, start_run
    from tasks.register import register_student

    cfg = load_config("test", {"data_dir": str(tmp_path), "registry": {"model_name": "r2w-crash-student"}})
    report = passing_report(tmp_path / "gate")
    folder = tmp_path / "student"  # stands in for adapter/merged folders: only the registry is under test
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    args = {"data": str(tmp_path), "report": str(tmp_path / "gate" / "gate_report.json")}
    args.update(report_dir=str(tmp_path / "gate"), folder=str(folder))

    for student in ("s0", "s1"):  # two killed registrations: s0's version is an orphan once s1 comes along
        proc = _python(REGISTER.format(student=student, **args), "register:before_alias")
        assert proc.returncode == FAULT_EXIT, proc.stderr[-2000:]
    client = client_for(cfg)
    name = cfg.registry.model_name
    pending = client.search_model_versions(f"name='{name}'")
    assert [(str(v.version), v.tags["r2w.student"]) for v in pending] == [("2", "s1")]  # s0's v1 already cleaned up
    assert pending[0].tags["r2w.registration"] == "pending" and not client.get_registered_model(name).aliases

    run_id = start_run(client, cfg, "rerun-s1")
    reg = register_student(cfg, run_id, report, tmp_path / "gate", folder, folder, {"student": "s1"})
    assert reg.registered and reg.version == "2"  # adopted, not created again
    versions = client.search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == ["2"]
    assert versions[0].tags["r2w.registration"] == "complete" and versions[0].tags["r2w.adopted_by_run"] == run_id
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"

    nxt = register_student(
        cfg, start_run(client, cfg, "s2"), report, tmp_path / "gate", folder, folder, {"student": "s2"}
    )
    assert nxt.version == "3"
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == ["2", "3"]


def test_a_run_killed_holding_the_model_slot_does_not_block_the_next(tmp_path):
    """Without the dead-holder release the second run would wait forever (the lease dies with its process)."""
    from prefect.client.orchestration import get_client

    from flows.retrain import one_run_per_model

    code = f"""
        import os
        from pathlib import Path
        from flows.retrain import one_run_per_model
        with one_run_per_model("crash-slot", Path({str(tmp_path)!r})):
            os._exit({FAULT_EXIT})
    """
    proc = _python(code, "")
    assert proc.returncode == FAULT_EXIT, proc.stderr[-2000:]
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("r2w-model-crash-slot").active_slots == 1  # leaked

    entered = threading.Event()

    def second() -> None:
        with one_run_per_model("crash-slot", tmp_path):
            entered.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    assert entered.wait(60), "the next run is blocked by the dead run's slot"
    thread.join(30)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("r2w-model-crash-slot").active_slots == 0


# ---------------------------------------------------------------- the whole flow, killed at every boundary

CHAIN = (
    "after:collect",
    "chroma_write:3",  # inside the hints stage's Chroma write
    "after:hints",
    "after:teach",
    "after:build_examples",
    "after:train",
    "after:evaluate",
    "register:before_alias",
)


@pytest.mark.slow
def test_flow_killed_at_every_stage_boundary_resumes_cleanly(tmp_path):
    import yaml

    from flows.retrain import retrain
    from r2w.contracts import DistillExample, Episode, Trajectory
    from r2w.datasets import load_records
    from r2w.hintstore import HintStore
    from r2w.tracking import client_for

    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(tmp_path / "data")
    raw["registry"]["model_name"] = "r2w-chain-student"
    raw["collect"] = {"source": "traces", "trace_paths": [str(write_traces(tmp_path / "t.jsonl", played_failures()))]}
    raw["distill"]["max_steps"] = 2
    raw["evaluate"].update(test_episodes=2, random_episodes=2, retention_tasks=1, general_passages=2)
    config = tmp_path / "chain.yaml"
    config.write_text(yaml.safe_dump(raw))

    for fault in CHAIN:
        proc = subprocess.run(
            [sys.executable, "-m", "flows.retrain", str(config)],
            cwd=REPO, env=_api_env(R2W_FAULT=fault), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == FAULT_EXIT, (fault, proc.stderr[-3000:])
        assert f"R2W_FAULT: killed at {fault.split(':')[0]}" in proc.stderr, fault

    summary = retrain(config=str(config))
    cached = ("collect", "hints", "teach", "train", "evaluate")  # every expensive stage ran exactly once
    assert {s: summary.stage_states[s] for s in cached} == dict.fromkeys(cached, "Cached"), summary.stage_states
    # build_examples is cheap and uncached by design: recomputed, it yields the same content-addressed dataset
    assert len(list((tmp_path / "data" / "datasets" / "distill-examples").iterdir())) == 1
    assert summary.registered_version == "1" and summary.gate_passed

    cfg = load_config(str(config))
    client = client_for(cfg)
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    assert [(str(v.version), v.tags["r2w.registration"]) for v in versions] == [("1", "complete")]
    assert versions[0].tags["r2w.training_dataset"] and versions[0].tags["r2w.student"]
    assert not {"champion"} & set(client.get_registered_model(cfg.registry.model_name).aliases)

    data = tmp_path / "data" / "datasets"
    manifests = list(data.glob("*/*/manifest.json"))
    assert manifests and not [p for p in data.glob("*/.*") if p.is_dir()], "temp folders left behind"
    types = {"trajectories": Trajectory, "distill-examples": DistillExample}
    for manifest in manifests:  # every stored dataset verifies against its content hash
        load_records(manifest.parent, types.get(manifest.parent.parent.name, Episode))
    store = HintStore(cfg.hints, cfg.data_path)
    assert store.count() >= 5
    assert_no_duplicate_hints(store)
