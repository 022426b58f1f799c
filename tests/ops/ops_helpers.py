"""Helpers of the `ops` tests: a real Prefect server on loopback with its own PREFECT_HOME, SQLite DB and port.

Started like `r2w stack up` starts it (flows/stack.py), but alone: the event-trigger and work-pool
tests need Prefect's server-side services (event triggers, automations, work pools), which the
in-process test harness of the default suite does not run the way a deployment sees them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.stack import _healthy, free_port

BIN = Path(sys.executable).parent
R2W = [sys.executable, "-m", "flows.cli"]  # this checkout's CLI (the venv's `r2w` script may be another's)
REPO = Path(__file__).resolve().parents[2]


class LoopbackPrefect:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": self.api_url,
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PYTHONPATH": str(REPO),  # this checkout's modules, also in flow runs a worker starts
        }
        self.log = home / "server.log"
        self.children: list[subprocess.Popen] = []

    def spawn(self, cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
        """A child process of this server's environment, in its own group (stopped at teardown)."""
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**self.env, **env},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    def start(self, timeout: float = 120) -> None:
        server = self.spawn(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], self.log
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if _healthy(self.api_url + "/health"):
                return
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited during start-up: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy after {timeout:.0f}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        for proc in reversed(self.children):  # workers first, the server last
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.children):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)


def wait_for(what: str, probe, timeout: float, every: float = 0.5):
    """Poll `probe` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
