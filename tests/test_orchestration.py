"""Prefect orchestration for real: deployments with crons, cached resume after a kill,
one run at a time per model, the retrain-only-when-worth-it cadence, and no second version of the same inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def test_deploy_registers_scheduled_deployment():
    from prefect.client.orchestration import get_client

    from flows.deploy import deploy

    names = deploy()
    assert "retrain/retrain-nightly" in names
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("retrain/retrain-nightly")
    assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
    assert dep.parameters == {"config": "demo", "overrides": {"collect": {"offset": "auto"}}}  # rounds move forward


def test_bad_deployment_spec_is_named(tmp_path):
    from flows.deploy import load_specs

    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n")
    with pytest.raises(ValueError, match=r"prefect.yaml: deployments\[0\] has no 'entrypoint'"):
        load_specs(bad)


@pytest.fixture(scope="module")
def long_training_config(tmp_path_factory) -> Path:
    """The test config with enough training steps that the flow can be killed mid-training."""
    data = tmp_path_factory.mktemp("resume")
    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(data)
    raw["distill"]["max_steps"] = 60
    raw["registry"]["model_name"] = "r2w-resume-student"
    path = data / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _wait_for_checkpoint(data_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(data_dir.glob("students/*/checkpoints/checkpoint-*/trainer_state.json"))
        if found:
            return found[0].parent
        if proc.poll() is not None:
            raise AssertionError(f"flow exited (rc={proc.returncode}) before training checkpointed")
        time.sleep(0.1)
    raise AssertionError("no training checkpoint appeared in time")


def test_killed_flow_resumes_from_first_unfinished_stage(long_training_config):
    from flows.retrain import retrain

    data_dir = long_training_config.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.retrain", str(long_training_config)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        checkpoint = _wait_for_checkpoint(data_dir, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(data_dir.glob("students/*/adapter")), "training finished before the kill"

    summary = retrain(config=str(long_training_config))
    states = summary.stage_states
    assert states["collect"] == "Cached" and states["hints"] == "Cached" and states["teach"] == "Cached"
    assert states["train"] == "Completed"
    student = yaml.safe_load(next(data_dir.glob("students/*/student.json")).read_text())
    assert student["resumed_from_step"] >= int(checkpoint.name.split("-")[1])
    assert summary.registered_version == "1"


def test_cadence_skips_when_nothing_is_new(long_training_config):
    from flows.retrain import retrain

    summary = retrain(config=str(long_training_config), overrides={"cadence": {"min_new_failures": 1}})
    assert summary.registered_version is None and summary.trajectories_kept == 0
    assert summary.reasons and summary.reasons[0].startswith("skipped: 0 new failures (need 1)")
    assert "teach" not in summary.stage_states


def test_two_runs_for_one_model_are_serialised(long_training_config):
    from flows.retrain import retrain

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(retrain(config=str(long_training_config)))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    first, second = sorted(results, key=lambda s: s.started_at)
    assert first.finished_at <= second.started_at, "runs for one model overlapped"
    # both found v1's inputs (config, failures, hint snapshot): a cached stop each, never v2/v3 of the same student
    assert [s.registered_version for s in results] == [None, None]
    for summary in results:
        assert summary.reasons[0].startswith("skipped: nothing new since v1: "), summary.reasons
        assert summary.stage_states["collect"] == "Cached" and "train" not in summary.stage_states
