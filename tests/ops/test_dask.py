"""`r2w run` on a real Dask cluster on loopback (issue 26.3): a `dask scheduler` and two `dask worker` processes
(one thread each), the test config run once in this process and once with runtime.dask_address pointing at
them. Every stored dataset has the content hash of the single-process run on the same seeds, both workers
played batches, their task runs are in the driver's Prefect API, and no worker started a Prefect API or store
of its own. Slow (two full runs): marker `ops`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.stack import free_port
from r2w.datasets import verify_dataset

pytestmark = pytest.mark.ops
REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")
ROLLOUT_KINDS = ("episodes", "failures", "teacher-episodes", "trajectories", "eval-episodes")


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """A scheduler and 2 single-threaded workers as separate processes (no nanny: the worker pid is the one we
    started). Workers get their own HOME and PREFECT_HOME, checked afterwards for anything written there."""
    root = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(root / "home"), "PREFECT_HOME": str(root / "prefect")}
    env.pop("PREFECT_API_URL", None)  # a worker learns the API from the task's context, as on a real cluster
    logs = root / "logs"
    logs.mkdir()
    procs = [_spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env, logs)]
    try:
        _wait_port(port)
        for _ in range(2):
            procs.append(
                _spawn(
                    [
                        DASK,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],  # fmt: skip
                    env,
                    logs,
                )
            )
        yield {"address": address, "worker_pids": {p.pid for p in procs[1:]}, "root": root}
    finally:
        for proc in reversed(procs):  # only the processes this fixture started, by pid
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _spawn(cmd: list, env: dict, logs: Path) -> subprocess.Popen:
    out = open(logs / f"{Path(str(cmd[1])).name}-{time.monotonic_ns()}.log", "wb")  # the process's log, kept open
    return subprocess.Popen([str(c) for c in cmd], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _wait_port(port: int, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"dask scheduler on port {port} did not start")


def _datasets(data_dir: Path) -> dict[str, list[str]]:
    """Every stored dataset version by kind, each verified against its content hash: {kind: [hash, ...]}."""
    out: dict[str, list[str]] = {}
    for manifest in sorted((data_dir / "datasets").glob("*/*/manifest.json")):
        assert verify_dataset(manifest.parent) is None, manifest.parent
        out.setdefault(manifest.parent.parent.name, []).append(manifest.parent.name)
    return {k: sorted(v) for k, v in out.items()}


def test_dask_run_stores_what_one_process_stores(loopback_cluster, tiny_model, tmp_path):
    from flows.retrain import retrain

    # the same data dir path for both runs (the student's adapter path is part of its episodes' identity):
    # the single-process run's dir is moved aside before the Dask run starts in a fresh one
    data = tmp_path / "run"
    overrides = {"data_dir": str(data), "models": {"base": str(tiny_model)}, "agent": {"batch_size": 2}}
    single = retrain(config="test", overrides=overrides)
    shutil.move(data, tmp_path / "single")
    dask_overrides = {**overrides, "runtime": {"dask_address": loopback_cluster["address"]}}
    sharded = retrain(config="test", overrides=dask_overrides)

    assert single.workers == {"collect": ["in-process"], "teach": ["in-process"], "evaluate": ["in-process"]}
    assert set(sharded.workers) == {"collect", "teach", "evaluate"}
    played_by = {w for stage in sharded.workers.values() for w in stage}
    pids = {int(w.rsplit(" pid ", 1)[1]) for w in played_by}
    assert pids == loopback_cluster["worker_pids"] and os.getpid() not in pids  # both workers, never the driver
    assert all(w.startswith("tcp://127.0.0.1:") for w in played_by)

    expected, got = _datasets(tmp_path / "single"), _datasets(data)
    assert set(ROLLOUT_KINDS) <= set(expected)
    assert got == expected  # every stored dataset (rollouts, examples, ...) has the single-process content hash
    assert (single.episodes, single.failures, single.trajectories_kept) == (
        sharded.episodes,
        sharded.failures,
        sharded.trajectories_kept,
    )
    assert single.scores == sharded.scores

    # the workers' task runs are in the driver's Prefect API; no worker started an API or wrote a store of its own
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="rollout-batch")))
    # collect 4 episodes, teach 4 tasks x 4 samples, evaluate 3 policies x 4 tasks; batches of 2
    assert len(runs) >= 2 + 8 + 3 * 2
    assert all(r.state and r.state.is_completed() for r in runs)
    # children of the flow run, not of the stage task: the stage's parameters (the loaded backend, the hint store)
    # were not serialised into the batches' context, so no model travelled
    assert all(not r.task_inputs.get("__parents__") for r in runs)
    written = [p for p in loopback_cluster["root"].joinpath("prefect").rglob("*") if p.is_file()]
    written += [p for p in loopback_cluster["root"].joinpath("home").rglob("*") if p.is_file()]
    assert written == [], f"workers wrote local state: {written[:5]}"
