"""A tiny flow for the work-pool test: it takes the same per-model slot as the retrain flow
(flows/run.py `one_run_per_model`), holds it for a while, and appends its start/end times.

Deployed from tests/ops/test_work_pool.py as `slot-test/slot-test`; a process worker runs it.
Without a lock dir, so only the Prefect global concurrency slot (what serialises runs of one model
across machines) can keep two runs of one model apart, not the per-machine file lock.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow

from flows.run import one_run_per_model

MEET_TIMEOUT_S = 120.0


@flow(name="slot-test")
def slot_flow(model: str, hold_s: float, record: str, meet: str = "") -> dict:
    """Hold `model`'s slot for `hold_s`; with `meet`, also until a run of model `meet` has started (at most
    MEET_TIMEOUT_S), so that on a loaded machine two runs that can hold their slots at once always overlap, and
    two that cannot (one worker, one shared slot) never do."""
    with one_run_per_model(model):
        started = time.time()
        Path(record).with_name(f"{model}.started").touch()
        time.sleep(hold_s)
        other = Path(record).with_name(f"{meet}.started")
        while meet and not other.exists() and time.time() - started < MEET_TIMEOUT_S:
            time.sleep(0.2)
        ended = time.time()
    entry = {"model": model, "start": started, "end": ended, "pid": os.getpid()}
    with Path(record).open("a") as out:  # one short line per run: an O_APPEND write is not interleaved
        out.write(json.dumps(entry) + "\n")
    return entry
