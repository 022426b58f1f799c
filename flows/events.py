"""Announce imported failures as Prefect events, so a deployment trigger can start a retrain.

    r2w collect import FILE...     # stores the failures, then emits the events below

Why one event per failure: Prefect 3.7's triggers count events (an `EventTrigger` fires when
`threshold` matching events arrive `within` a window); they cannot add up a number carried in a
payload, and its metric triggers only watch flow-run lateness/duration/successes. So "retrain once
>= N new failures arrived within W" is an `EventTrigger` on `r2w.failure.imported` with
`threshold: N, within: W`, and the importer emits one such event per new failure. A reactive
trigger fires once when its window's count reaches N and then waits for the window to end, so
one large import starts one retrain, not one per N failures. Besides those, one
`r2w.import.completed` event per import carries the counts (records, failures, dataset hash) for
people and dashboards; no trigger counts it.

Every event's resource is `r2w.model.<registry.model_name>`, so a trigger matches the model it
retrains. A failure counts as new when its dataset version was not stored before (a re-import of
the same failures emits the summary only); the retrain run's cadence check
(`cadence.min_new_failures`, flows/cadence.py) is the exact, per-episode count.

Emitting never breaks an import: without PREFECT_API_URL nothing is sent (ephemeral mode has no
triggers to tell), and an unreachable or failing server costs a warning, never the stored data.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.settings import PREFECT_API_URL

from r2w.config import R2WConfig
from r2w.datasets import DatasetRef

FAILURE_EVENT = "r2w.failure.imported"
IMPORT_EVENT = "r2w.import.completed"
SEND_TIMEOUT_S = 20.0
log = logging.getLogger("r2w")


def model_resource_id(model_name: str) -> str:
    """The Prefect resource id of an r2w model: what a retrain trigger's `match` names."""
    return f"r2w.model.{model_name}"


def import_events(cfg: R2WConfig, ref: DatasetRef, records: int, new_failures: int) -> list[Event]:
    """The summary event of one import, then one `r2w.failure.imported` per new failure."""
    name = cfg.registry.model_name
    resource = {"prefect.resource.id": model_resource_id(name), "prefect.resource.name": name, "r2w.config": cfg.name}
    dataset = {"prefect.resource.id": f"r2w.dataset.{ref.hash}", "prefect.resource.role": "failures-dataset"}
    counts = {
        "records": records,
        "failures": ref.rows,
        "new_failures": new_failures,
        "dataset_hash": ref.hash,
        "model": name,
        "config": cfg.name,
    }
    summary = Event(event=IMPORT_EVENT, resource=resource, related=[dataset], payload=counts)
    each = [
        Event(
            event=FAILURE_EVENT,
            resource=resource,
            related=[dataset],
            payload={"dataset_hash": ref.hash, "n": i + 1, "of": new_failures},
        )
        for i in range(new_failures)
    ]
    return [summary, *each]


def new_failures_in(ref: DatasetRef) -> int:
    """Failures this import added: all rows of a dataset version stored for the first time, else 0.

    `record_import` appends every import to the content-addressed folder's manifest, so more than
    one entry means the same failures were imported (and announced) before.
    """
    manifest = json.loads((Path(ref.path) / "manifest.json").read_text())
    return ref.rows if len(manifest.get("imports", [])) <= 1 else 0


def announce_import(cfg: R2WConfig, ref: DatasetRef, records: int) -> int:
    """Emit the import's events to the Prefect API; returns how many were sent (0 when none could be)."""
    if not PREFECT_API_URL.value():
        log.info("PREFECT_API_URL is not set: import of %s not announced (no server, no trigger)", ref.short)
        return 0
    events = import_events(cfg, ref, records, new_failures_in(ref))
    try:
        asyncio.run(asyncio.wait_for(_send(events), SEND_TIMEOUT_S))
    except Exception as exc:  # the failures are stored; a missing announcement must not undo or fail that
        log.warning(
            "could not announce import %s to the Prefect API at %s (%s: %s); the failures are stored, but no "
            "trigger saw them: a scheduled retrain picks them up",
            ref.short,
            PREFECT_API_URL.value(),
            type(exc).__name__,
            exc,
        )
        return 0
    return len(events)


async def _send(events: list[Event]) -> None:
    # A direct client rather than `emit_event`'s background worker: a CLI exits right after, and the
    # checkpoint at the end (a ping the server answers after reading every event before it) tells us
    # whether the events arrived, so an unreachable server becomes our warning, not a silent drop.
    async with get_events_client(reconnection_attempts=0, checkpoint_every=max(1, len(events))) as client:
        for event in events:
            await client.emit(event)
