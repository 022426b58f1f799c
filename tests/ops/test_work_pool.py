"""A process work pool for real (loopback Prefect server, marked `ops`): `r2w deploy --pool` sends runs to the
pool; two `prefect worker start --pool ... --type process` workers run two models' flow runs at the same
time, while two runs of one model take turns on the per-model slot `r2w-model-<name>` that the retrain
flow holds (flows/run.py `one_run_per_model`, exercised through tests/ops/slot_flow.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ops_helpers import BIN, R2W, REPO, LoopbackPrefect, wait_for

pytestmark = pytest.mark.ops
POOL = "r2w-ops-pool"
HOLD_S = 6.0


def _run(server: LoopbackPrefect, model: str, record: Path, meet: str = ""):
    """Start one run of the slot flow; `meet`: it holds its slot until a run of that model has started too."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    parameters = {"model": model, "hold_s": HOLD_S, "record": str(record), "meet": meet}
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        return run_deployment("slot-test/slot-test", parameters=parameters, timeout=0)


def _finished(server: LoopbackPrefect, runs: list) -> list:
    with server.client() as client:
        states = [client.read_flow_run(r.id).state for r in runs]
    failed = [s for s in states if s.is_final() and not s.is_completed()]
    assert not failed, [f"{s.name}: {s.message}" for s in failed]
    return states if all(s.is_completed() for s in states) else []


def _workers_of(server: LoopbackPrefect, runs: list) -> set[str]:
    """Which workers submitted these runs (each worker writes 'Worker NAME submitting flow run ID' to the run's log)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with server.client() as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
    return {m.split("'")[1] for m in (log.message for log in logs) if m.startswith("Worker '") and "submitting" in m}


def _entries(record: Path, model: str) -> list[dict]:
    return sorted(
        (e for e in map(json.loads, record.read_text().splitlines()) if e["model"] == model), key=lambda e: e["start"]
    )


def test_two_workers_run_two_models_at_once_and_one_model_in_turn(prefect_server, tmp_path):
    spec = tmp_path / "prefect.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "slot-test",
                        "entrypoint": "tests/ops/slot_flow.py:slot_flow",
                        "work_pool": {"name": "unused"},
                    }
                ]
            }
        )
    )
    import subprocess

    deployed = subprocess.run(
        [*R2W, "deploy", "--spec", str(spec), "--pool", POOL],
        cwd=REPO,
        env=prefect_server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"registered deployment slot-test/slot-test on work pool {POOL}" in deployed.stdout
    with prefect_server.client() as client:
        assert client.read_work_pool(POOL).type == "process"
        deployment = client.read_deployment_by_name("slot-test/slot-test")
    assert deployment.work_pool_name == POOL and deployment.job_variables == {"working_dir": str(REPO)}

    # two workers, one run at a time each, polling every second
    for i in (1, 2):
        prefect_server.spawn(
            [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                POOL,
                "--type",
                "process",
                "--limit",
                "1",
                "--name",
                f"ops-worker-{i}",
            ],
            tmp_path / f"worker-{i}.log",
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_PREFETCH_SECONDS="1",
        )
    record = tmp_path / "runs.jsonl"
    record.touch()

    # two models: both runs hold their own model's slot at the same time
    pairs = (("model-a", "model-b"), ("model-b", "model-a"))
    runs = [_run(prefect_server, m, record, meet=other) for m, other in pairs]
    wait_for("both models' runs to complete", lambda: _finished(prefect_server, runs), 240, every=1)
    (a,), (b,) = _entries(record, "model-a"), _entries(record, "model-b")
    assert a["start"] < b["end"] and b["start"] < a["end"], f"two models did not overlap: {a} {b}"
    assert a["pid"] != b["pid"] and _workers_of(prefect_server, runs) == {"ops-worker-1", "ops-worker-2"}

    # one model twice: the second run waits for the first run's slot
    runs = [_run(prefect_server, "model-c", record) for _ in range(2)]
    wait_for("both runs of one model to complete", lambda: _finished(prefect_server, runs), 240, every=1)
    first, second = _entries(record, "model-c")
    assert second["start"] >= first["end"], f"two runs of one model overlapped: {first} {second}"
    with prefect_server.client() as client:
        limit = client.read_global_concurrency_limit_by_name("r2w-model-model-c")
        runs = [client.read_flow_run(r.id) for r in runs]
    assert limit.limit == 1 and limit.active_slots == 0  # the slot the retrain flow uses, given back
