"""Engine processes of a killed run are stopped by the next engine; a live run's are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from r2w.backends.orphans import descendants, forget, reap_orphans, record_started

# A stand-in for a run: it starts a long-lived child (as vllm.LLM starts its engine core), records it,
# prints the record's path and then waits to be killed.
OWNER = """
import subprocess, sys, time
from pathlib import Path
from r2w.backends.orphans import descendants, record_started
before = descendants()
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(engine.pid, record_started(before, Path(sys.argv[1])), flush=True)
time.sleep(120)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_runs_engine_is_reaped_and_its_record_removed(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    engine_pid, record = owner.stdout.readline().split()
    engine_pid = int(engine_pid)
    assert os.path.isfile(record) and not gone(engine_pid)
    assert reap_orphans(tmp_path) == []  # the owner is alive: its engine is in use

    owner.send_signal(signal.SIGKILL)  # as the OOM killer does: no cleanup runs
    owner.wait()
    assert not gone(engine_pid)  # the engine outlived its owner
    assert reap_orphans(tmp_path, grace_s=5) == [engine_pid]
    deadline = time.monotonic() + 5
    while not gone(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(engine_pid) and not os.path.exists(record)


def test_a_reused_pid_is_not_taken_for_the_recorded_process(tmp_path):
    """Same pid, other start time: a different process that must not be killed."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = descendants() - {(child.pid, psutil.Process(child.pid).create_time())}
        record = record_started(before, tmp_path)
        assert record is not None
        text = record.read_text()
        # the owner (this test) looks dead (other start time), and the child's start time is off too
        started = psutil.Process().create_time()
        text = text.replace(repr(started), repr(started - 100))
        child_started = psutil.Process(child.pid).create_time()
        record.write_text(text.replace(repr(child_started), repr(child_started - 100)))
        assert reap_orphans(tmp_path, grace_s=1) == []
        assert child.poll() is None and not record.exists()  # the stale record is dropped, the process kept
    finally:
        child.kill()
        child.wait()


def test_a_closed_engine_leaves_no_record(tmp_path):
    before = descendants()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = record_started(before, tmp_path)
        assert record is not None and record.is_file()
        forget(record)
        assert not record.exists() and record_started(descendants(), tmp_path) is None  # nothing new started
    finally:
        child.kill()
        child.wait()
