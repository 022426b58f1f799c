"""What a SIGKILLed run leaves behind (issue 21): its ephemeral Prefect server and a RUNNING MLflow run.

Before the fix the server (uvicorn, ~300 MB) stayed up reparented to init after every kill, and the killed
run stayed RUNNING forever (`r2w status` listed it as running). Now a run records its owner (pid, process
start time, host); the next run stops servers whose owner is provably dead and marks such runs KILLED,
tagged with who found them and when. Owners that may still live (this process, another host, no record)
are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import yaml
from robust_helpers import REPO, played_failures, write_traces

from r2w.config import load_config
from r2w.faults import FAULT_EXIT


def _ephemeral_env(**extra: str) -> dict[str, str]:
    """No PREFECT_API_URL / PREFECT_HOME: the child starts its own ephemeral server under its data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_logged(args: list[str], log: Path, fault: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a child with its output in files, not pipes: a killed child's orphan server inherits its stdout and
    stderr, and a reader of pipes would wait for that server to exit."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.run(
            args, cwd=REPO, env=_ephemeral_env(R2W_FAULT=fault), stdout=out, stderr=err, timeout=timeout
        )
    return subprocess.CompletedProcess(
        args, proc.returncode, Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()
    )


def prefect_servers(data: Path) -> list[psutil.Process]:
    """Ephemeral Prefect API servers (uvicorn) whose PREFECT_HOME is under `data`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "prefect.server.api.server:create_app" not in " ".join(proc.info["cmdline"] or []):
                continue
            if proc.environ().get("PREFECT_HOME", "").startswith(str(data)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(tmp_path / "data")
    raw["registry"]["model_name"] = "r2w-killed-student"
    raw["collect"] = {"source": "traces", "trace_paths": [str(write_traces(tmp_path / "t.jsonl", played_failures()))]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_killed_run_leaves_no_server_and_no_running_run_after_the_next_start(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from r2w.tracking import client_for

    config = _config(tmp_path)
    data = tmp_path / "data"
    proc = run_logged(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config)], tmp_path / "killed", "after:collect"
    )
    assert proc.returncode == FAULT_EXIT, proc.stderr[-3000:]
    orphans = prefect_servers(data)
    assert orphans, "the killed run's ephemeral server should still be up (that is the defect)"

    cfg = load_config(str(config))
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    (killed,) = client.search_runs([exp.experiment_id])
    assert killed.info.status == "RUNNING"

    out = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert out.exit_code == 0, out.output
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "KILLED" and "KILLED" in out.output
    assert "r2w status" in run.data.tags["r2w.killed_found_by"] and run.data.tags["r2w.killed_found_at"]

    from r2w.runstate import local_api

    local_api()  # what the next run does first (this process uses the test harness API: reaping only)
    gone, alive = psutil.wait_procs(orphans, timeout=15)
    assert not alive, f"orphan Prefect server(s) {[p.pid for p in alive]} still up"


DIES = """
    import os, signal, sys
    from r2w.runtime import configure_environment
    configure_environment(sys.argv[1])
    from r2w.config import load_config
    from r2w.tracking import client_for, start_run
    cfg = load_config("test", {"data_dir": sys.argv[1], "registry": {"experiment": "r2w-dead-runs"}})
    print(start_run(client_for(cfg), cfg, "doomed"), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_only_runs_of_provably_dead_owners_are_marked_killed(tmp_path):
    """SIGKILLed owner on this host: KILLED by the next run's start. This process (alive), another host's run
    and a run without an owner record: left RUNNING (nothing proves them dead)."""
    from r2w.tracking import KILLED_FOUND_BY, OWNER_HOST, OWNER_PID, OWNER_STARTED, client_for, start_run

    cfg = load_config("test", {"data_dir": str(tmp_path), "registry": {"experiment": "r2w-dead-runs"}})
    client = client_for(cfg)
    alive = start_run(client, cfg, "alive")
    exp = client.get_experiment_by_name("r2w-dead-runs").experiment_id
    elsewhere = client.create_run(exp, tags={OWNER_PID: "1", OWNER_STARTED: "0.0", OWNER_HOST: "another-host"})
    unknown = client.create_run(exp)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DIES), str(tmp_path)],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    doomed = child.stdout.split()[-1]
    assert client.get_run(doomed).info.status == "RUNNING"

    time.sleep(0.05)
    nxt = start_run(client, cfg, "next")
    status = {r: client.get_run(r).info.status for r in (doomed, alive, elsewhere.info.run_id, unknown.info.run_id)}
    assert status == {
        doomed: "KILLED",
        alive: "RUNNING",
        elsewhere.info.run_id: "RUNNING",
        unknown.info.run_id: "RUNNING",
    }
    assert client.get_run(doomed).data.tags[KILLED_FOUND_BY].startswith(f"run {nxt}")
