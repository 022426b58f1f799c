"""Local state a run sets up and leaves behind: the ephemeral Prefect API server and where results go.

A local run (no PREFECT_API_URL) talks to an ephemeral Prefect server: a uvicorn subprocess (~300 MB) on
a SQLite DB under PREFECT_HOME. Two things went wrong (issue 21):
- Processes starting at once on a fresh PREFECT_HOME each ran the DB migrations at the same time and
  failed. The first start is now serialised by a file lock beside the DB (Prefect's own lock is a thread
  lock); later starts find the schema current.
- A SIGKILLed run never stops its server: it stays up reparented to init. Each server is recorded with its
  owner's pid, start time and host (r2w/backends/orphans.py); the next run stops servers (and vLLM engines)
  whose owner is provably dead, never one whose owner may still run.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from r2w.backends.orphans import forget, reap_orphans, record_processes
from r2w.caching import results_under
from r2w.locks import file_lock

log = logging.getLogger(__name__)
_RECORDED: set[int] = set()  # server pids this process has recorded


def local_api() -> str | None:
    """Reap orphans of dead runs, then start (once per process, one process at a time per PREFECT_HOME) and
    record the ephemeral Prefect API server; returns its URL, or None when PREFECT_API_URL names a server.

    Call before the first flow of a process (the CLI does) so the first start happens under the lock; called
    inside a flow (the engine started the server already) it only records the server and reaps orphans.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE, get_current_settings

    reap_orphans()
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    server = SubprocessASGIServer()
    if not server.running:
        home = Path(get_current_settings().home).expanduser()
        with file_lock(home / ".r2w-first-start.lock"):  # the DB's migrations run inside start()
            server.start()
    _record(server)
    return server.api_url


def _record(server) -> None:
    """Record the server process under this process's identity (once), for reap_orphans after a kill."""
    import psutil

    proc = server.server_process
    if proc is None or proc.pid in _RECORDED:
        return
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        return
    record = record_processes([{"pid": proc.pid, "started": started}], kind="prefect-server")
    _RECORDED.add(proc.pid)
    atexit.register(forget, record)  # runs before Prefect's own atexit stop (registered earlier)


@contextmanager
def run_state(data_dir: str | Path) -> Iterator[Path]:
    """What a flow run holds locally: orphans reaped, its server recorded, task results under the data dir."""

    local_api()
    with results_under(data_dir) as folder:
        yield folder
