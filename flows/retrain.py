"""The `retrain` flow: move the lessons of failed episodes into a hint-free student.

    r2w run --config demo                 # CLI
    python -m flows.retrain demo          # same flow, no CLI

failures -> hints (Chroma) -> teacher rollouts with hints -> hint-free training set -> LoRA SFT/DPO/on-policy
-> evaluate base/teacher/student -> gates -> register `challenger` (only if every gate passed).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from r2w.backends import make_backend, make_student_backend
from r2w.config import R2WConfig, load_config
from r2w.contracts import DistillExample, Episode, Trajectory, content_hash, utcnow
from r2w.datasets import load_records, save_records
from r2w.faults import fault_point
from r2w.models import resolve_model
from r2w.privacy import loggable_config
from r2w.runstate import run_state
from r2w.runtime import configure_environment, set_torch_threads
from r2w.tracking import client_for, log_metrics, log_params, start_run


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
    started_at: str = ""
    finished_at: str = ""


@flow(name="retrain")
def retrain(config: str = "demo", overrides: dict[str, Any] | None = None) -> RunSummary:
    """Collect -> extract hints -> teach -> distill -> evaluate/gate -> register.

    Runs hold a Prefect concurrency slot named after the registered model, so two runs for one
    model never interleave; expensive stages are cached, so a rerun resumes where one stopped.
    """
    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    with one_run_per_model(cfg.registry.model_name, cfg.data_path / "locks"), run_state(cfg.data_path):
        return _retrain(cfg)


@contextmanager
def one_run_per_model(model_name: str, lock_dir: Path | None = None) -> Iterator[None]:
    """Hold the global concurrency slot `r2w-model-<name>` (limit 1, created on first use).

    A run killed with SIGKILL never releases its slot; with Prefect's in-memory lease storage
    (ephemeral mode) nothing ever would, and the next run would wait forever. So local runs also
    hold an OS file lock (released by the kernel when a process dies) and record themselves in
    `<lock_dir>/run-<model>.json`: a run that gets the file lock and finds a record of a run on
    this host knows that run is dead, and gives its slot back before taking its own.
    """
    import fcntl

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

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
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

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


def run_stage(summary: RunSummary, stage: str, task, *args):
    """Run a task, remember its final state name (Completed / Cached) and return its result."""
    state = task(*args, return_state=True)
    summary.stage_states[stage] = state.name
    result = state.result()
    fault_point(f"after:{stage}")  # test-only crash point (r2w/faults.py); a no-op unless R2W_FAULT is set
    return result


def _retrain(cfg: R2WConfig) -> RunSummary:
    set_torch_threads(cfg.runtime.torch_threads)
    client = client_for(cfg)
    run_id = start_run(client, cfg, f"retrain-{cfg.name}", tags={"r2w.config_hash": cfg.hash})
    log_params(client, run_id, loggable_config(cfg))  # canary secrets only as hashes
    summary = RunSummary(
        mlflow_run_id=run_id, config=cfg.name, model_name=cfg.registry.model_name, started_at=str(utcnow())
    )
    try:
        return _stages(cfg, client, run_id, summary)
    except BaseException as exc:  # the MLflow run says why it ended; nothing stored is half-written
        client.set_tag(run_id, "r2w.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise


def _stages(cfg: R2WConfig, client, run_id: str, summary: RunSummary) -> RunSummary:
    from evaluation.metrics import format_score, score_metrics
    from flows.cadence import novelty_since_last_version
    from prompts.hints import PROMPT_VERSION as HINTS_PROMPT_VERSION
    from r2w.backends.dspy_lm import make_extractor_lm
    from r2w.hintstore import HintStore
    from r2w.traces import log_dataset_input
    from tasks.collect import collect_task, source_fingerprint
    from tasks.distill import build_examples_task, resolve_student_base, train_task
    from tasks.gate import evaluate_task, gate_task
    from tasks.hints import hints_task
    from tasks.register import register_task
    from tasks.replay import replay_task
    from tasks.teach import teach_task

    log = get_run_logger()
    run_dir = cfg.data_path / "runs" / run_id
    lineage = {"config_hash": cfg.hash, "base_model": cfg.models.base, "mlflow_run": run_id}

    base_path = model_field("models.base", cfg.models.base, cfg.data_path)
    base = make_backend(cfg.models.backend, base_path, dtype=cfg.models.dtype, seed=cfg.runtime.seed)
    teacher = base
    if cfg.models.teacher or cfg.models.teacher_url:
        field = "models.teacher" if cfg.models.teacher else "models.base"
        teacher_path = model_field(field, cfg.models.teacher or cfg.models.base, cfg.data_path)
        teacher = make_backend(
            cfg.models.backend, teacher_path, dtype=cfg.models.dtype, url=cfg.models.teacher_url, seed=cfg.runtime.seed
        )

    # 1. collect failures of the base agent
    collected = run_stage(summary, "collect", collect_task, cfg, base, "base", source_fingerprint(cfg))
    if cfg.collect.since or cfg.collect.until:
        client.set_tag(run_id, "r2w.window", f"{cfg.collect.since or ''}/{cfg.collect.until or ''}")
    failures = load_records(collected.failures, Episode)
    summary.episodes, summary.failures = collected.n_episodes, collected.n_failures
    summary.scrubbed = collected.scrubbed
    log_metrics(client, run_id, {f"privacy.scrubbed.{kind}": n for kind, n in collected.scrubbed.items()})
    lineage["failures_dataset"] = collected.failures.hash
    log_dataset_input(client, run_id, collected.failures, failures)  # lineage: the run's input, by content hash
    log.info("collected %d episodes, %d failures", collected.n_episodes, collected.n_failures)
    if not failures:
        window = (
            f" in {cfg.collect.since or '-'}..{cfg.collect.until or '-'}" if cfg.collect.source != "rollout" else ""
        )
        return _stop(client, run_id, summary, f"skipped: no failures{window}, nothing to learn", tag="skipped")

    # 2. extract hints into auditable memory
    store = HintStore(cfg.hints, cfg.data_path)
    lm = make_extractor_lm(cfg.hints.extractor, base, model_name=Path(base_path).name)
    extractor_id = f"{cfg.hints.extractor.model or Path(base_path).name}/{HINTS_PROMPT_VERSION}"
    hints = run_stage(summary, "hints", hints_task, failures, cfg.hints, store, lm, extractor_id, run_id)
    # The snapshot is read live (not from a cached result): a person may have curated the store.
    snapshot = store.snapshot_id()
    summary.hints_extracted, summary.hints_active = hints.extracted, len(store.list(status="active"))
    summary.hints_rejected, summary.hint_snapshot = sum(hints.rejected.values()), snapshot
    summary.hints_rejected_by_reason = dict(hints.rejected)
    summary.failures_quarantined = len(hints.quarantined)
    lineage["hint_snapshot"] = snapshot
    log_metrics(
        client,
        run_id,
        {
            **{f"hints.rejected.{_metric_key(reason)}": n for reason, n in hints.rejected.items()},
            "hints.quarantined_failures": len(hints.quarantined),
            **{f"hints.quarantined.{kind}": n for kind, n in hints.quarantine_kinds.items()},
        },
    )
    if hints.quarantined:
        client.set_tag(run_id, "r2w.quarantined_failures", ",".join(hints.quarantined)[:5000])
    if cfg.hints.k > 0 and summary.hints_active == 0:
        reason = (
            f"stopped: the hint store ({store.identity}) has no active hints after extraction "
            f"({hints.extracted} extracted, {summary.hints_rejected} rejected); expected at least one for the "
            "teacher (add hints.curated_packs, or set hints.k=0 to teach without hints)"
        )
        return _stop(client, run_id, summary, reason)

    novelty = novelty_since_last_version(cfg, client, failures, store.list(status="active"))
    log_metrics(client, run_id, {"cadence.new_failures": novelty.new_failures, "cadence.new_hints": novelty.new_hints})
    if not novelty.worth_retraining(cfg):
        return _stop(client, run_id, summary, novelty.reason(cfg), tag="skipped")

    # 3. teacher re-runs training tasks with retrieved hints; verified successes only
    taught = run_stage(summary, "teach", teach_task, cfg, teacher, store.retrieve, snapshot)
    trajectories = load_records(taught.trajectories, Trajectory)
    summary.teacher_attempts, summary.trajectories_kept = taught.attempts, taught.kept
    lineage["trajectories_dataset"] = taught.trajectories.hash

    # 4. distill: strip hints, check leakage, train a LoRA student (method: cfg.distill.method)
    # DPO's rejected actions are the base agent's own, from its collected episodes of the same tasks
    base_episodes = load_records(collected.episodes, Episode) if cfg.distill.method == "dpo" else None
    examples, leakage = run_stage(
        summary,
        "build_examples",
        build_examples_task,
        trajectories,
        store.list(status="active"),
        cfg.distill,
        cfg.runtime.seed,
        base_episodes,
    )
    summary.training_examples = sum(e.split == "train" for e in examples)  # teacher rows; replay is extra
    if cfg.distill.replay.examples and examples:
        # against forgetting: the base's own answers on other families, mixed into the SFT set
        replay = run_stage(summary, "replay", replay_task, cfg, base, cfg.distill.replay)
        examples = examples + load_records(replay.examples, DistillExample)
        leakage = {**leakage, "replay": replay.kept, "replay_empty": replay.empty}
        families = cfg.distill.replay.families
        log.info("replay: %d base answers from %s added (%d empty skipped)", replay.kept, families, replay.empty)
    examples_ref = save_records(examples, cfg.data_path / "datasets", "distill-examples", {"leakage": leakage})
    lineage["training_dataset"] = examples_ref.hash
    log_metrics(
        client,
        run_id,
        {
            "collect.failures": collected.n_failures,
            "collect.episodes": collected.n_episodes,
            "hints.extracted": hints.extracted,
            "hints.rejected": summary.hints_rejected,
            "hints.active": hints.active_hints,
            "teach.kept": taught.kept,
            "teach.single_sample_rate": taught.single_sample_rate,
            **{f"leakage.{k}": v for k, v in leakage.items()},
        },
    )
    if summary.training_examples == 0:
        reason = "no verified teacher successes to train on (nothing registered)"
        if cfg.distill.method == "dpo":
            reason = "no DPO pairs: no teacher success and failed base episode part in a shared state (see leakage.*)"
        return _stop(client, run_id, summary, reason)

    # init_from=champion: the new adapter sits on the champion's merged model (continual rounds)
    start = resolve_student_base(cfg, base_path)
    parent = [start.parent_version] if start.parent_version else []
    if start.parent_version:
        lineage["parent_version"] = start.parent_version
    student_key = [examples_ref.hash, cfg.distill.model_dump(mode="json"), *parent]
    student_dir = cfg.data_path / "students" / content_hash(student_key)[:16]
    lineage["student"] = student_dir.name  # lets a rerun adopt a version its killed predecessor created
    student = run_stage(
        summary, "train", train_task, examples, start.path, cfg.distill, student_dir, cfg.train_seed, True, *parent
    )
    log_metrics(
        client,
        run_id,
        {
            "train.final_loss": student.train_losses[-1],
            "train.tokens_per_s": student.tokens_per_s,
            "train.s_per_step": student.s_per_step,
        },
    )

    # 5. evaluate hint-free on held-out games, then gate
    student_backend = make_student_backend(
        cfg.models.backend, start.path, student.adapter_dir, student.merged_dir, cfg.models.dtype, cfg.runtime.seed
    )
    evaluation = run_stage(summary, "evaluate", evaluate_task, cfg, base, student_backend, store.retrieve, snapshot)
    report, report_dir = run_stage(summary, "gate", gate_task, cfg, evaluation, leakage, run_dir, lineage)
    summary.scores = {s.policy: format_score(s) for s in evaluation.scores}
    summary.gate_passed, summary.reasons = report.passed, report.reasons
    summary.report_path = str(report_dir / "gate_report.md")
    log_metrics(
        client,
        run_id,
        {
            **score_metrics(evaluation.scores),
            **{f"retention.{k}": v for k, v in evaluation.retention.items()},
        },
    )

    # 6. register, only if every gate passed (registry writes last)
    registration = run_stage(
        summary,
        "register",
        register_task,
        cfg,
        run_id,
        report,
        report_dir,
        Path(student.adapter_dir),
        Path(student.merged_dir),
        lineage,
    )
    summary.registered_version = registration.version
    if not registration.registered:
        summary.reasons = summary.reasons or [registration.reason]
    client.set_terminated(run_id)
    summary.finished_at = str(utcnow())
    return summary


def model_field(field: str, spec: str, data_dir: Path) -> Path:
    """resolve_model, with the config field named in the error (exit 2 in the CLI)."""
    from r2w.models import ModelNotFoundError

    try:
        return resolve_model(spec, data_dir)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{field}: {exc}") from None


def _metric_key(reason: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in reason.replace(" ", "_"))


def _stop(client, run_id: str, summary: RunSummary, reason: str, tag: str = "not-run") -> RunSummary:
    client.set_tag(run_id, "r2w.gate", tag)
    client.set_tag(run_id, "r2w.stop_reason", reason)
    client.set_terminated(run_id)
    summary.reasons = [reason]
    summary.finished_at = str(utcnow())
    return summary


if __name__ == "__main__":
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else "demo").model_dump_json(indent=2))
