"""Reap processes (vLLM engines, ephemeral Prefect API servers) whose owner died.

`vllm.LLM` starts an engine-core process (and its workers) beside the Python process that built it.
When that owner dies without closing the engine (SIGKILL, the kernel's OOM killer, a SIGTERM that
Prefect turns into an abort), the engine core stays up holding 2-3 GiB, and the next run on a 24 GiB
machine gets OOM-killed itself (session 7: a killed run's engine took a concurrent evaluation down).

So every engine records the processes it started, keyed by the owner's pid and start time (a reused pid
is never taken for the owner); before a new engine starts, records of dead owners are read and their
still-running processes (same pid AND start time) are terminated. Records live in a per-user folder
under the temp dir; nothing else is touched. A record names the owner's host too: an owner on another
host (a temp dir shared between machines) can never be proven dead from here, so it is left alone.
The same records cover the ephemeral Prefect API server (uvicorn, ~300 MB) each local run starts
(r2w/runstate.py): a SIGKILLed run leaves it behind, reparented to init.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

import psutil

from r2w.datasets import write_json_atomically

log = logging.getLogger(__name__)


def records_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"r2w-engines-{os.getuid()}"


def _identity(proc: psutil.Process) -> dict:
    return {"pid": proc.pid, "started": proc.create_time()}


def _owner() -> dict:
    return {**_identity(psutil.Process()), "host": socket.gethostname()}


def descendants() -> set[tuple[int, float]]:
    """(pid, start time) of every process below this one."""
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            out.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return out


def record_started(before: set[tuple[int, float]], folder: Path | None = None) -> Path | None:
    """Record the processes started since `before` (the engine's) under this process's name."""
    started = sorted(descendants() - before)
    if not started:
        return None
    return record_processes([{"pid": p, "started": t} for p, t in started], folder)


def record_processes(processes: list[dict], folder: Path | None = None, kind: str = "vllm") -> Path:
    """Record processes ({pid, started}) this process started and must stop: reaped once it is dead."""
    owner = _owner()
    path = (folder or records_dir()) / f"{owner['pid']}-{os.urandom(4).hex()}.json"  # one owner, several records
    return write_json_atomically(path, {"owner": owner, "kind": kind, "processes": processes})


def forget(record: Path | None) -> None:
    """The engine was closed by its owner: nothing to reap."""
    if record is not None:
        record.unlink(missing_ok=True)


def _alive(ident: dict) -> psutil.Process | None:
    """The process if it still runs AND is the same one (start time), not a pid reused since."""
    try:
        proc = psutil.Process(ident["pid"])
        same = abs(proc.create_time() - ident["started"]) < 0.01
        return proc if same and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def reap_orphans(folder: Path | None = None, grace_s: float = 10.0) -> list[int]:
    """Terminate the recorded processes of dead owners; returns the pids stopped."""
    folder = folder or records_dir()
    if not folder.is_dir():
        return []
    reaped: list[int] = []
    for record in sorted(folder.glob("*.json")):
        try:
            data = json.loads(record.read_text())
            owner, processes = data["owner"], data["processes"]
        except (OSError, ValueError, KeyError):
            log.warning("unreadable engine record %s: removed", record)
            record.unlink(missing_ok=True)
            continue
        if _alive(owner) is not None or owner.get("host", socket.gethostname()) != socket.gethostname():
            continue  # in use, or on another host: not provably dead
        orphans = [p for ident in processes if (p := _alive(ident)) is not None]
        for proc in orphans:
            proc.terminate()
        _, still = psutil.wait_procs(orphans, timeout=grace_s)
        for proc in still:
            with contextlib.suppress(psutil.NoSuchProcess):  # psutil refuses a pid reused meanwhile
                proc.kill()
        if orphans:
            pids = [p.pid for p in orphans]
            kind = data.get("kind", "vllm")
            log.warning("stopped %d %s process(es) %s left by dead run pid %s", len(pids), kind, pids, owner["pid"])
            reaped += pids
        record.unlink(missing_ok=True)
    return reaped
