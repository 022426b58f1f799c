"""Concurrency: registry writes for one model never interleave across processes, and two backfills over
overlapping windows store each hint once (content-hash ids, upserts, one writer per collection).
Two flows for one model in one process: tests/test_orchestration.py::test_two_runs_for_one_model_are_serialised."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from robust_helpers import LESSONS, REPO, lesson_for, passing_report, window_episodes, write_traces

from r2w.config import HintsConfig, load_config

HERE = Path(__file__).resolve().parent


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def test_registry_lock_never_interleaves_two_processes(tmp_path):
    log = tmp_path / "lock.log"
    code = f"""
        import os, time
        from r2w.config import load_config
        from r2w.tracking import registry_lock
        cfg = load_config("test", {{"data_dir": {str(tmp_path)!r}, "registry": {{"model_name": "r2w-lock"}}}})
        for _ in range(15):
            with registry_lock(cfg):
                with open({str(log)!r}, "a") as fh:
                    fh.write(f"start {{os.getpid()}}\\n"); fh.flush(); time.sleep(0.01)
                    fh.write(f"end {{os.getpid()}}\\n")
    """
    _finish([_start(code), _start(code)])
    lines = log.read_text().split()
    pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4], strict=True))
    assert len(pairs) == 30
    assert all(a == "start" and c == "end" and b == d for a, b, c, d in pairs), "two writers inside the lock at once"


def test_two_processes_registering_one_model_never_interleave(tmp_path):
    """Each registration is create-version + move-challenger under the lock: the alias ends on the last
    version created, and every version is complete (interleaving would leave challenger on an older one)."""
    from r2w.tracking import client_for, start_run

    passing_report(tmp_path / "gate")
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    code = """
        import sys
        from r2w.runtime import configure_environment
        configure_environment(sys.argv[1])
        from pathlib import Path
        from r2w.config import load_config
        from r2w.contracts import GateReport
        from r2w.tracking import client_for, start_run
        from tasks.register import register_student
        cfg = load_config("test", {"data_dir": sys.argv[1], "registry": {"model_name": "r2w-concurrent"}})
        gate = Path(sys.argv[1]) / "gate"
        report = GateReport.model_validate_json((gate / "gate_report.json").read_text())
        folder, writer = Path(sys.argv[1]) / "student", sys.argv[2]
        client = client_for(cfg)
        for i in range(3):
            run_id = start_run(client, cfg, f"{writer}-{i}")
            reg = register_student(cfg, run_id, report, gate, folder, folder, {"student": f"{writer}-{i}"})
            print(reg.version)
    """
    cfg = load_config("test", {"data_dir": str(tmp_path), "registry": {"model_name": "r2w-concurrent"}})
    client = client_for(cfg)
    start_run(client, cfg, "create-the-store")  # the SQLite store exists before the writers race (as in use)
    procs = [_start(code, str(tmp_path), writer) for writer in ("A", "B")]
    outs = [[int(v) for v in out.split()] for out in _finish(procs)]
    assert all(o == sorted(o) and len(o) == 3 for o in outs) and sorted(outs[0] + outs[1]) == [1, 2, 3, 4, 5, 6]
    versions = client.search_model_versions("name='r2w-concurrent'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4, 5, 6]
    assert all(v.tags["r2w.registration"] == "complete" for v in versions)
    assert str(client.get_model_version_by_alias("r2w-concurrent", "challenger").version) == "6"
    by_writer = {v.tags["r2w.student"]: int(v.version) for v in versions}
    for writer, mine in zip("AB", outs, strict=True):
        assert [by_writer[f"{writer}-{i}"] for i in range(3)] == mine  # tags belong to the version created


def test_overlapping_backfill_windows_store_each_hint_once(tmp_path):
    """Two processes import overlapping windows of the same traces and write their hints concurrently."""
    from r2w.hintstore import HintStore
    from r2w.traces import import_trace_file

    episodes = window_episodes(12)
    traces = write_traces(tmp_path / "traces.jsonl", episodes)
    code = """
        import sys
        from r2w.runtime import configure_environment
        configure_environment(sys.argv[1] + "/cache-" + sys.argv[2])
        from r2w.config import HintsConfig
        from r2w.hintstore import HintStore
        from r2w.traces import import_trace_file
        from robust_helpers import lesson_for
        failures, errors = import_trace_file(sys.argv[3], since=sys.argv[4], until=sys.argv[5])
        assert not errors, errors
        store = HintStore(HintsConfig(collection="backfill-hints"), sys.argv[1])
        for episode in failures:  # one read-modify-write per failure: many chances to race
            store.upsert([lesson_for(episode)], run_id="backfill-" + sys.argv[2])
        print(len(failures))
    """
    windows = [("a", "2026-11-01", "2026-11-03"), ("b", "2026-11-02", "2026-11-04")]
    procs = [_start(code, str(tmp_path), name, str(traces), since, until) for name, since, until in windows]
    counts = [int(out) for out in _finish(procs)]
    overlap = {e.episode_id for e in import_trace_file(traces, "2026-11-02", "2026-11-03")[0]}
    assert counts == [6, 6] and len(overlap) == 3  # the day both windows cover

    union = {e.episode_id: e for e in import_trace_file(traces, "2026-11-01", "2026-11-04")[0]}
    store = HintStore(HintsConfig(collection="backfill-hints"), tmp_path)
    hints = store.list()
    assert len(hints) == len(LESSONS) and len({h.hint_id for h in hints}) == len(LESSONS)
    for hint in hints:
        cited = sorted(e for e, ep in union.items() if lesson_for(ep).hint_id == hint.hint_id)
        assert sorted(hint.provenance.episode_ids) == cited, "an episode's evidence lost or counted twice"
        assert hint.support == len(cited)
        assert sorted(hint.provenance.run_ids) == ["backfill-a", "backfill-b"]


def test_same_window_twice_changes_nothing(tmp_path):
    """Re-running a finished window (sequential backfill rerun) adds no hint and no support."""
    from r2w.hintstore import HintStore

    store = HintStore(HintsConfig(collection="rerun-hints"), tmp_path)
    hints = [lesson_for(e) for e in window_episodes(8)]
    store.upsert(hints, run_id="first")
    before = [h.model_dump_json(exclude={"updated_at"}) for h in store.list()]
    again = store.upsert(hints, run_id="first")
    assert again["added"] == 0 and again["merged"] == 0
    assert [h.model_dump_json(exclude={"updated_at"}) for h in store.list()] == before
    assert load_config("test").hints.collection  # the default collection name is valid (>= 3 chars)


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Chroma creates its schema on first open; two processes doing that at the same instant must not
    fail with "table collections already exists" (seen in CI when two backfills started together).
    Without the open lock about 1 in 7 simultaneous first opens failed here, so each process opens 40
    fresh stores in lockstep with the other."""
    code = """
        import sys, time
        from pathlib import Path
        from r2w.runtime import configure_environment
        configure_environment(sys.argv[1] + "/cache-" + sys.argv[2])
        from r2w.config import HintsConfig
        from r2w.hintstore import HintStore
        failed = []
        for k in range(40):
            root = Path(sys.argv[1]) / f"store{k}"
            barrier = root / "barrier"
            barrier.mkdir(parents=True, exist_ok=True)
            (barrier / sys.argv[2]).touch()
            while len(list(barrier.iterdir())) < 2:  # both processes reach this store, then open it
                time.sleep(0.001)
            try:  # go on after a failure, so the other process is never left waiting at a barrier
                HintStore(HintsConfig(collection="opened-together"), root)
            except Exception as exc:
                failed.append(f"store{k}: {exc}")
        print(failed)
    """
    procs = [_start(code, str(tmp_path), name) for name in ("a", "b")]
    assert [out.strip() for out in _finish(procs)] == ["[]", "[]"]


FIRST_USE = """
    import os, sys, time
    from pathlib import Path
    from r2w.runtime import configure_environment
    data, me, traces = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    configure_environment(data)  # PREFECT_HOME, results, MLflow DB and Chroma all under the empty data dir

    def together(step):  # every process reaches `step`, then all go at once
        gate = data.parent / "barriers" / step
        gate.mkdir(parents=True, exist_ok=True)
        (gate / me).touch()
        while len(list(gate.iterdir())) < 3:
            time.sleep(0.005)

    from prefect import flow
    from flows.cli import app
    from r2w.config import HintsConfig
    from r2w.hintstore import HintStore
    from r2w.runstate import local_api
    config = data.parent / "config.yaml"
    together("imported")
    app(["collect", "import", traces, "--config", str(config)], standalone_mode=False)  # MLflow's first use
    together("chroma")
    HintStore(HintsConfig(collection="first-use"), data)
    together("prefect")
    local_api()  # what `r2w run` does before its flow: the ephemeral server's DB migrations

    @flow(name="first-use")
    def hello() -> int:
        return 1

    assert hello() == 1
    print("ok", me)
"""


def test_three_first_uses_of_an_empty_data_dir_all_succeed(tmp_path):
    """Three processes use a new data dir at the same instant: MLflow creates its SQLite tables (before the fix
    `OperationalError: duplicate column name` or `table ... already exists`), Chroma its schema, Prefect's
    ephemeral server its DB. Each first initialisation runs under a file lock; all three must succeed and the
    three imports land in one experiment."""
    import yaml
    from robust_helpers import played_failures

    data = tmp_path / "data"
    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(data)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    traces = write_traces(tmp_path / "traces.jsonl", played_failures())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{HERE}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(FIRST_USE), str(data), name, str(traces)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b", "c")
    ]
    outs = _finish(procs, timeout=600)
    assert sorted(o.split()[-1] for o in outs) == ["a", "b", "c"]

    from r2w.tracking import client_for

    cfg = load_config(str(tmp_path / "config.yaml"))
    client = client_for(cfg)
    experiments = [e for e in client.search_experiments() if e.name == cfg.registry.experiment]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}, [r.info.status for r in runs]
