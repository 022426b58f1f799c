"""Seeded kills at random points of the retrain flow, each followed by a rerun (issue 21).

Each round kills `r2w run` in one stage group (collect, hints, teach, train, register), at a point chosen
by a seeded RNG: a fault point (r2w/faults.py: `os._exit`, no cleanup, exactly what SIGKILL leaves) or a
real SIGKILL at a random delay while the student trains. Then the same command reruns, and must end with:
one more complete registered version (challenger on it, nothing pending), no orphan process (the killed
run's ephemeral Prefect server reaped), every dataset verifying against its hash, and no MLflow run left
RUNNING (the killed one KILLED). Every round uses its own `runtime.seed`, so every stage recomputes and
every kill point is really reached.

Real components only: CLI subprocesses in ephemeral Prefect mode (own server, DB under the data dir),
SQLite MLflow, on-disk Chroma, TRL on the tiny model. Runtime: 4.5 minutes for the default 5 rounds (10 runs)
on a loaded 2-core machine. R2W_KILL_SEED / R2W_KILL_ROUNDS change the plan.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from robust_helpers import REPO, played_failures, write_traces
from test_killed_leftovers import _ephemeral_env, prefect_servers, run_logged

from r2w.config import load_config
from r2w.faults import FAULT_EXIT

STAGE_ORDER = ("hints", "collect", "teach", "train", "register")


def kill_plan(rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    """(stage, point) per round. The first round's store is empty, so only there does a Chroma write
    (kill in the middle of a batch) surely happen; later rounds kill after the hints stage instead."""
    rest = list(STAGE_ORDER[1:])
    rng.shuffle(rest)
    stages = [STAGE_ORDER[0], *rest]
    plan = []
    for i in range(rounds):
        stage = stages[i % len(stages)]
        if stage == "hints":
            point = f"chroma_write:{rng.randint(1, 3)}" if i == 0 else "after:hints"
        elif stage == "collect":
            point = "after:collect"
        elif stage == "teach":
            point = "after:teach"
        elif stage == "train":
            point = rng.choice(["after:build_examples", "after:train", f"sigkill:{rng.uniform(0.0, 4.0):.2f}"])
        else:
            point = rng.choice(["after:evaluate", "register:before_alias"])
        plan.append((stage, point))
    return plan


def _config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(tmp_path / "data")
    raw["registry"]["model_name"] = "r2w-kills-student"
    raw["collect"] = {"source": "traces", "trace_paths": [str(write_traces(tmp_path / "t.jsonl", played_failures()))]}
    raw["teach"].update(tasks=4, samples=4)  # 16 tries: the random tiny model must find a success each round
    raw["distill"]["max_steps"] = 2
    raw["evaluate"].update(test_episodes=2, random_episodes=2, retention_tasks=1, general_passages=2)
    path = tmp_path / "kills.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(config: Path, seed: int, point: str | None, log: Path) -> subprocess.CompletedProcess:
    """`r2w run` in a subprocess (output in files: a killed run's orphan server keeps pipes open); a
    `sigkill:<delay>` point sends SIGKILL that long after the training stage started."""
    args = [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--set", f"runtime.seed={seed}"]
    if not (point and point.startswith("sigkill:")):
        return run_logged(args, log, point or "", timeout=900)
    delay = float(point.split(":")[1])
    err_path = Path(f"{log}.err")
    with open(f"{log}.out", "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(args, cwd=REPO, env=_ephemeral_env(), stdout=out, stderr=err)
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            if any("build-distill-set" in line and "Finished" in line for line in err_path.read_text().splitlines()):
                time.sleep(delay)  # training is running now
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(args, proc.returncode, Path(f"{log}.out").read_text(), err_path.read_text())


def _check_after_rerun(cfg, data: Path, round_no: int, killed_runs: set[str]) -> None:
    from r2w.datasets import verify_dataset
    from r2w.tracking import client_for

    _, alive = psutil.wait_procs(prefect_servers(data), timeout=20)
    assert not alive, f"orphan Prefect server(s) {[p.pid for p in alive]}"
    client = client_for(cfg)
    name = cfg.registry.model_name
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == round_no + 1, [(v.version, v.tags.get("r2w.registration")) for v in versions]
    assert {v.tags.get("r2w.registration") for v in versions} == {"complete"}
    latest = max(int(v.version) for v in versions)
    assert int(client.get_model_version_by_alias(name, "challenger").version) == latest
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"], "a run left RUNNING"
    for run in runs:
        if run.info.run_id in killed_runs:
            assert run.info.status == "KILLED" and run.data.tags.get("r2w.killed_found_by"), run.info
    manifests = list((data / "datasets").glob("*/*/manifest.json"))
    assert manifests and not [r for m in manifests if (r := verify_dataset(m.parent))]
    assert not [p for p in (data / "datasets").glob("*/.*") if p.is_dir()], "temp folders left behind"


@pytest.mark.slow_robust
def test_seeded_kills_at_random_points_each_followed_by_a_clean_rerun(tmp_path):
    from r2w.tracking import client_for

    rng = random.Random(int(os.environ.get("R2W_KILL_SEED", "21")))
    plan = kill_plan(rng, int(os.environ.get("R2W_KILL_ROUNDS", "5")))
    config = _config(tmp_path)
    cfg = load_config(str(config))
    data = cfg.data_path
    killed_runs: set[str] = set()
    for round_no, (stage, point) in enumerate(plan):
        killed = _run(config, round_no, point, tmp_path / f"kill-{round_no}")
        expected = -signal.SIGKILL if point.startswith("sigkill:") else FAULT_EXIT
        assert killed.returncode == expected, (round_no, stage, point, killed.returncode, killed.stderr[-3000:])
        assert prefect_servers(data), "the killed run's server should be up until the next run reaps it"
        client = client_for(cfg)
        exp = client.get_experiment_by_name(cfg.registry.experiment)
        running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        killed_runs |= {r.info.run_id for r in running}

        rerun = _run(config, round_no, None, tmp_path / f"rerun-{round_no}")
        assert rerun.returncode == 0, (round_no, stage, point, rerun.stderr[-3000:])
        _check_after_rerun(cfg, data, round_no, killed_runs)
