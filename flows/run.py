"""Bookkeeping around one retrain run: its MLflow run, its summary, stage states, and its lock.

The flow (flows/retrain.py) only tells the story; what every stage call has in common lives
here: record the stage's Prefect state (Completed / Cached), log its result's `metrics()`, stop
early with a reason, and end the MLflow run FAILED with a scrubbed error when anything raises.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import BaseModel

from r2w.config import R2WConfig
from r2w.contracts import BASE_HINTS, STUDENT, PolicyScore, utcnow
from r2w.costs import BreakEven, StageCost, break_even, measured
from r2w.faults import fault_point
from r2w.privacy import loggable_config, scrub_text
from r2w.registry import Lineage, Tag
from r2w.tracking import client_for, log_metrics, log_params, start_run

HOSTED_TEACHER_STAGES = ("teach",)  # stages whose generated tokens all come from the teacher


class RunSummary(BaseModel):
    """What a person wants to know after a run, in one place (the CLI prints it)."""

    mlflow_run_id: str
    config: str
    episodes: int = 0
    failures: int = 0
    hints_extracted: int = 0
    hints_rejected: int = 0
    hints_rejected_by_reason: dict[str, int] = {}  # parser and screen reasons (screen_injection, ...)
    failures_quarantined: int = 0  # failures with injection text, never sent to the extractor
    scrubbed: dict[str, int] = {}  # private data replaced before storing, by kind
    hints_active: int = 0
    hint_snapshot: str = ""
    teacher_attempts: int = 0
    trajectories_kept: int = 0
    training_examples: int = 0
    scores: dict[str, str] = {}
    gate_passed: bool = False
    reasons: list[str] = []
    registered_version: str | None = None
    model_name: str = ""
    report_path: str | None = None
    stage_states: dict[str, str] = {}  # e.g. {"collect": "Cached", "train": "Completed"}
    workers: dict[str, list[str]] = {}  # per rollout stage: who played it (in-process, or Dask worker address + pid)
    costs: dict[str, StageCost] = {}  # per stage: wall s, CPU s, generated tokens (r2w/costs.py)
    break_even: BreakEven | None = None  # days until the student's saved tokens repay the round
    round: str = ""  # registered | consumed (its range had no failures) | retry (the next round plays it again)
    task_range: str = ""  # rollout rounds: train tasks [a:b) this round used
    window: str = ""  # imported rounds: the collect window since/until
    previous_version: str | None = None  # the previous round's registered version of this model
    started_at: str = ""
    finished_at: str = ""


class Run:
    """One MLflow run and the summary of the flow run that owns it."""

    def __init__(self, cfg: R2WConfig) -> None:
        self.cfg = cfg
        self.client = client_for(cfg)
        self.id = start_run(self.client, cfg, f"retrain-{cfg.name}", tags={Tag.CONFIG_HASH: cfg.hash})
        log_params(self.client, self.id, loggable_config(cfg))  # canary secrets only as hashes
        self.summary = RunSummary(
            mlflow_run_id=self.id, config=cfg.name, model_name=cfg.registry.model_name, started_at=str(utcnow())
        )

    def stage(self, name: str, task, **inputs: Any):
        """Run a stage's task, remember its final state (Completed / Cached) and its cost (wall, CPU, tokens
        generated: none when cached), log its metrics, return its result."""
        with measured() as cost:
            state = task(**inputs, return_state=True)
            result = state.result()
        self.summary.stage_states[name] = state.name
        if getattr(result, "workers", None):  # rollout stages; a cached result names who played it then
            self.summary.workers[name] = list(result.workers)
        cost.tokens = 0 if state.name == "Cached" else int(getattr(result, "tokens", 0) or 0)
        if name in HOSTED_TEACHER_STAGES and self.cfg.models.teacher_url:  # every token of these is the teacher's
            cost.usd = round(cost.tokens * self.cfg.models.teacher_usd_per_1m_tokens / 1e6, 6)
        self.summary.costs[name] = cost
        self.log(cost.metrics(name))
        fault_point(f"after:{name}")  # test-only crash point (r2w/faults.py); a no-op unless R2W_FAULT is set
        if callable(getattr(result, "metrics", None)):
            self.log(result.metrics())
        return result

    def start_round(self, lineage: Lineage) -> None:
        """Record what this round learns from (task range or window) and the round it follows."""
        s, previous = self.summary, lineage.previous_version or None
        s.task_range, s.window, s.previous_version = lineage.task_range, lineage.window, previous
        self.tag(Tag.MODEL, self.cfg.registry.model_name)
        if lineage.task_range:  # the next round finds a consumed range by these tags (flows/rounds.py)
            self.tag(Tag.TASK_RANGE, lineage.task_range)
        if lineage.window.strip("/"):  # backfill finds finished chunks by this tag
            self.tag(Tag.WINDOW, lineage.window)

    def break_even(self, scores: list[PolicyScore]) -> BreakEven | None:
        """Days until the student's saved retrieval tokens repay the stages run so far (r2w/costs.py)."""
        by_policy = {s.policy: s for s in scores}
        if BASE_HINTS not in by_policy or STUDENT not in by_policy:
            return None
        hinted, student = by_policy[BASE_HINTS].mean_tokens, by_policy[STUDENT].mean_tokens
        self.summary.break_even = break_even(self.summary.costs, hinted, student, self.cfg.cadence.episodes_per_day)
        self.log(self.summary.break_even.metrics())
        return self.summary.break_even

    def log(self, metrics: dict[str, float]) -> None:
        log_metrics(self.client, self.id, metrics)

    def log_series(self, key: str, values: list[float]) -> None:
        for step, value in enumerate(values):
            log_metrics(self.client, self.id, {key: value}, step=step)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.id, key, value[:5000])

    def stop(self, reason: str, gate: str = "not-run", consumed: bool = False) -> RunSummary:
        """End early with a reason a person can act on (exit 0: nothing went wrong). `consumed`: the round's
        task range holds nothing to learn, so the next round moves past it instead of playing it again."""
        self.tag(Tag.GATE, gate)
        self.tag(Tag.STOP_REASON, reason)
        self.summary.reasons = [reason]
        self.summary.round = "consumed" if consumed else ""
        return self.finish()

    def finish(self) -> RunSummary:
        total = StageCost(
            wall_s=round(sum(c.wall_s for c in self.summary.costs.values()), 3),
            cpu_s=round(sum(c.cpu_s for c in self.summary.costs.values()), 3),
            tokens=sum(c.tokens for c in self.summary.costs.values()),
            usd=round(sum(c.usd for c in self.summary.costs.values()), 6),
        )
        self.log(total.metrics("total"))
        # a round that registered nothing and consumed nothing (gate failed, stopped) is played again next round
        self.summary.round = "registered" if self.summary.registered_version else (self.summary.round or "retry")
        self.tag(Tag.ROUND, self.summary.round)
        self.client.set_terminated(self.id)
        self.summary.finished_at = str(utcnow())
        return self.summary

    def fail(self, exc: BaseException) -> None:
        """The MLflow run says why it ended; input values quoted in the error are scrubbed first."""
        message = scrub_text(f"{type(exc).__name__}: {exc}", self.cfg.privacy)
        self.tag(Tag.ERROR, message)
        self.client.set_terminated(self.id, "FAILED")


@contextmanager
def tracked_run(cfg: R2WConfig) -> Iterator[Run]:
    run = Run(cfg)
    try:
        yield run
    except BaseException as exc:  # nothing stored is half-written; the run is marked FAILED with the reason
        run.fail(exc)
        raise


@contextmanager
def one_run_per_model(model_name: str, lock_dir: Path | None = None) -> Iterator[None]:
    """Hold the global concurrency slot `r2w-model-<name>` (limit 1, created on first use).

    A run killed with SIGKILL never releases its slot; with Prefect's in-memory lease storage
    (ephemeral mode) nothing ever would, and the next run would wait forever. So local runs also
    hold an OS file lock (released by the kernel when a process dies) and record themselves in
    `<lock_dir>/run-<model>.json`: a run that gets the file lock and finds a record of a run on
    this host knows that run is dead, and gives its slot back before taking its own.
    """
    name = f"r2w-model-{model_name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it first
                pass
    if lock_dir is None:
        with concurrency(name, occupy=1, strict=True, lease_duration=600):
            yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    record = lock_dir / f"run-{model_name}.json"
    with open(lock_dir / f"run-{model_name}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # waits while another local run of this model is alive
        try:
            _release_dead_holder(name, record)
            with concurrency(name, occupy=1, strict=True, lease_duration=600):
                record.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": str(utcnow())}))
                try:
                    yield
                finally:
                    record.unlink(missing_ok=True)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


def _release_dead_holder(name: str, record: Path) -> None:
    """Give back the slot of a run on this host that died holding it (we hold the file lock)."""
    if not record.is_file():
        return
    try:
        holder = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        holder = {}
    if holder.get("host") not in (None, socket.gethostname()):
        return  # another machine's run: its lease expires on the server
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots > 0:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(active_slots=limit.active_slots - 1)
            )
            logging.getLogger("r2w").warning(
                "released the %s slot of run pid %s, which died holding it", name, holder.get("pid")
            )
    record.unlink(missing_ok=True)
