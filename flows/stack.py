"""`r2w stack up|down|status`: the full local stack as real servers on loopback.

    r2w stack up [--vllm]      # Prefect server + process worker, MLflow server, Chroma server (+ vLLM)
    r2w run --config demo --stack
    r2w stack down

State (pids, ports, URLs) lives in <data_dir>/stack/stack.json; logs in <data_dir>/stack/logs/.
`--stack` points a run at these servers by configuration alone: PREFECT_API_URL, the MLflow
tracking URI, the Chroma URL and (with --vllm) the teacher's OpenAI-compatible URL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from r2w.backends.vllm_server import LocalVLLMServer

BIN = Path(sys.executable).parent


@dataclass
class Service:
    name: str
    port: int
    pid: int
    url: str
    health: str
    log: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_dir(data_dir: str | Path) -> Path:
    return Path(data_dir).resolve() / "stack"


def _start(name: str, cmd: list[str], port: int, health: str, folder: Path, env: dict | None = None) -> Service:
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # outlives this command; `stack down` ends the whole group
    )
    return Service(name, port, proc.pid, f"http://127.0.0.1:{port}", health, str(log))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except OSError:
        return False


def _wait(service: Service, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _healthy(service.url + service.health):
            return
        if not _alive(service.pid):
            raise RuntimeError(f"{service.name} exited during start-up; see {service.log}")
        time.sleep(0.5)
    raise TimeoutError(f"{service.name} not healthy after {timeout:.0f}s at {service.url}; see {service.log}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of this process counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def up(
    data_dir: str | Path,
    ports: dict[str, int] | None = None,
    vllm_model: str | Path | None = None,
    timeout: float = 180,
) -> dict:
    """Start every server, wait until each is healthy, and record them; returns the state."""
    folder = stack_dir(data_dir)
    if (folder / "stack.json").is_file() and any(_alive(s["pid"]) for s in status(data_dir)["services"]):
        raise RuntimeError(f"a stack is already running for {folder} (r2w stack down first)")
    folder.mkdir(parents=True, exist_ok=True)
    ports = {name: (ports or {}).get(name) or free_port() for name in ("prefect", "mlflow", "chroma", "vllm")}
    prefect_env = {"PREFECT_HOME": str(folder / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    services = [
        _start(
            "prefect",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
            ports["prefect"],
            "/api/health",
            folder,
            prefect_env,
        ),
        _start(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder / 'mlflow.db'}",
                "--artifacts-destination",
                (folder / "mlartifacts").as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            ports["mlflow"],
            "/health",
            folder,
        ),
        _start(
            "chroma",
            [
                str(BIN / "chroma"),
                "run",
                "--path",
                str(folder / "chroma"),
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["chroma"]),
            ],
            ports["chroma"],
            "/api/v2/heartbeat",
            folder,
        ),
    ]
    if vllm_model:
        services.append(
            _start(
                "vllm",
                # the same command r2w's own server helper uses: seeded, with the valid-action trie
                LocalVLLMServer(vllm_model, served_name="teacher", port=ports["vllm"]).command(),
                ports["vllm"],
                "/health",
                folder,
            )
        )
    state = {"services": [asdict(s) for s in services], "data_dir": str(Path(data_dir).resolve())}
    _write_state(folder, state)
    try:
        for service in services:
            _wait(service, timeout)
        worker = _start(
            "prefect-worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", "r2w-local", "--type", "process"],
            0,
            "",
            folder,
            {**prefect_env, "PREFECT_API_URL": services[0].url + "/api"},
        )
        state["services"].append(asdict(worker))
        _write_state(folder, state)
    except Exception:
        down(data_dir)
        raise
    return state


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / "stack.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(folder / "stack.json")


def status(data_dir: str | Path) -> dict:
    path = stack_dir(data_dir) / "stack.json"
    if not path.is_file():
        return {"services": []}
    state = json.loads(path.read_text())
    for s in state["services"]:
        s["alive"] = _alive(s["pid"])
        s["healthy"] = bool(s["health"]) and s["alive"] and _healthy(s["url"] + s["health"])
    return state


def down(data_dir: str | Path, grace: float = 10) -> list[str]:
    """Stop every recorded server (SIGTERM, then SIGKILL after `grace` seconds)."""
    state = status(data_dir)
    stopped = []
    for s in state["services"]:
        if s["alive"]:
            try:
                os.killpg(s["pid"], signal.SIGTERM)
            except ProcessLookupError:
                continue
            stopped.append(s["name"])
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(s["pid"]) for s in state["services"]):
        time.sleep(0.2)
    for s in state["services"]:
        if _alive(s["pid"]):
            try:
                os.killpg(s["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    (stack_dir(data_dir) / "stack.json").unlink(missing_ok=True)
    return stopped


def stack_overrides(data_dir: str | Path) -> tuple[dict[str, str], dict]:
    """(environment, config overrides) that point a run at the running stack."""
    state = status(data_dir)
    urls = {s["name"]: s["url"] for s in state["services"] if s.get("healthy")}
    missing = {"prefect", "mlflow", "chroma"} - set(urls)
    if missing:
        raise RuntimeError(f"stack for {data_dir} is not up (missing: {sorted(missing)}); run `r2w stack up`")
    env = {"PREFECT_API_URL": urls["prefect"] + "/api"}
    overrides: dict = {"registry": {"tracking_uri": urls["mlflow"]}, "hints": {"chroma_url": urls["chroma"]}}
    if "vllm" in urls:
        overrides["models"] = {"teacher_url": urls["vllm"] + "/v1"}
    return env, overrides
