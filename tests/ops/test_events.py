"""Event-driven retraining on a real Prefect server (loopback): `r2w collect import` emits one
`r2w.failure.imported` event per new failure, and the `retrain` deployment's event trigger starts
exactly one flow run once the threshold is reached within its window, none below it (marked `ops`)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from ops_helpers import R2W, REPO, LoopbackPrefect, wait_for

from flows.events import FAILURE_EVENT, IMPORT_EVENT, model_resource_id
from flows.stack import free_port
from r2w.contracts import Episode, Message, Step

pytestmark = pytest.mark.ops
MODEL = "r2w-events-student"
THRESHOLD = 3


def _failures(path: Path, ids: range) -> Path:
    """An r2w trace file of failed episodes (ids make each file's content, hence its dataset, new)."""
    step = Step(
        index=0,
        observation="You are in the kitchen.",
        valid_actions=["open fridge", "look around"],
        prompt=[Message(role="user", content="Next action:")],
        response="open fridge",
        action="open fridge",
    )
    rows = [
        Episode(
            episode_id=f"prod-{i}",
            env="twx",
            category="twc",
            task_id=f"twx/twc/train/{i}",
            split="train",
            seed=i,
            task="Tidy up the kitchen.",
            steps=[step],
            success=False,
            outcome="step limit",
            policy="prod-agent",
            created_at=datetime(2026, 11, 10, 12, tzinfo=UTC),
        ).model_dump_json()
        for i in ids
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def _config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(tmp_path / "data")
    raw["registry"]["model_name"] = MODEL
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _import(server_env: dict, config: Path, trace: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*R2W, "collect", "import", str(trace), "-c", str(config)],
        cwd=REPO,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _events(server: LoopbackPrefect, name: str) -> list[dict]:
    body = {"filter": {"event": {"name": [name]}, "any_resource": {"id": [model_resource_id(MODEL)]}}, "limit": 50}
    with server.client() as client:
        response = client.request("POST", "/events/filter", json=body)
    return response.json()["events"]


def _runs_of(server: LoopbackPrefect, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with server.client() as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_threshold_of_imported_failures_starts_exactly_one_retrain(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import deploy

    config = _config(tmp_path)
    spec = tmp_path / "prefect.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "retrain-on-failures",
                        "entrypoint": "flows/retrain.py:retrain",
                        "parameters": {"config": str(config)},
                        "triggers": [
                            {
                                "type": "event",
                                "match": {"prefect.resource.id": model_resource_id(MODEL)},
                                "expect": [FAILURE_EVENT],
                                "threshold": THRESHOLD,
                                "within": 3600,
                            }
                        ],
                    }
                ]
            }
        )
    )
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        assert deploy(spec) == ["retrain/retrain-on-failures"]
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name("retrain/retrain-on-failures")
        (automation,) = client.read_automations_by_name("retrain-on-failures__automation_1")
    assert automation.trigger.threshold == THRESHOLD and automation.actions[0].deployment_id == deployment.id

    # 2 new failures: below the threshold -> the server saw both events, and no run was created
    first = _import(prefect_server.env, config, _failures(tmp_path / "a.jsonl", range(2)))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "announced to Prefect: 3 events" in first.stdout  # the summary + one per failure
    wait_for("2 failure events on the server", lambda: len(_events(prefect_server, FAILURE_EVENT)) == 2, 60)
    (summary,) = wait_for("the import summary event", lambda: _events(prefect_server, IMPORT_EVENT), 30)
    assert summary["payload"]["failures"] == 2 and summary["payload"]["new_failures"] == 2
    assert summary["payload"]["model"] == MODEL and len(summary["payload"]["dataset_hash"]) == 64
    assert summary["resource"]["prefect.resource.id"] == model_resource_id(MODEL)
    # the same failures again: stored once already, so nothing new is counted
    again = _import(prefect_server.env, config, _failures(tmp_path / "a2.jsonl", range(2)))
    assert again.returncode == 0 and "announced to Prefect: 1 events" in again.stdout, again.stdout + again.stderr
    wait_for("the second summary", lambda: len(_events(prefect_server, IMPORT_EVENT)) == 2, 30)
    wait_for("no run below the threshold", lambda: _settled(prefect_server, deployment.id, 0), 15)

    # 2 more new failures: 4 >= 3 within the window -> exactly one run of the retrain deployment
    second = _import(prefect_server.env, config, _failures(tmp_path / "b.jsonl", range(10, 12)))
    assert second.returncode == 0, second.stdout + second.stderr
    (run,) = wait_for("a flow run of retrain-on-failures", lambda: _runs_of(prefect_server, deployment.id), 90)
    assert run.parameters == {"config": str(config)}
    # the trigger reads the live event stream; the server stores events in batches, so they may land after the run
    wait_for("4 failure events stored", lambda: len(_events(prefect_server, FAILURE_EVENT)) == 4, 60)
    wait_for("still exactly one run", lambda: _settled(prefect_server, deployment.id, 1), 15)


def _settled(server: LoopbackPrefect, deployment_id, expected: int, quiet_s: float = 5.0) -> bool:
    """True once the deployment has had exactly `expected` runs for `quiet_s` seconds in a row."""
    import time

    deadline = time.time() + quiet_s
    while time.time() < deadline:
        if len(_runs_of(server, deployment_id)) != expected:
            return False
        time.sleep(0.5)
    return True


def test_import_succeeds_with_a_warning_when_no_prefect_api_answers(tmp_path):
    """The failures are stored and the command exits 0; the warning names the unreachable API."""
    import os

    dead = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": dead, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    config = _config(tmp_path)
    result = _import(env, config, _failures(tmp_path / "a.jsonl", range(3)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 failures imported" in result.stdout and "announced" not in result.stdout
    assert "could not announce import" in result.stderr and dead in result.stderr
    (manifest,) = (tmp_path / "data" / "datasets" / "failures").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["rows"] == 3
