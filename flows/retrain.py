"""The `retrain` flow: move the lessons of failed episodes into a hint-free student.

    r2w run --config demo                 # CLI
    python -m flows.retrain demo          # same flow, no CLI

failures -> hints (Chroma) -> teacher rollouts with hints -> hint-free training set -> LoRA SFT/DPO/on-policy
-> evaluate base/teacher/student -> gates -> register `challenger` (only if every gate passed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from r2w.backends import make_backend
from r2w.config import R2WConfig, load_config
from r2w.contracts import Episode, Trajectory, content_hash, utcnow
from r2w.datasets import load_records, save_records
from r2w.models import resolve_model
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
    with one_run_per_model(cfg.registry.model_name):
        return _retrain(cfg)


@contextmanager
def one_run_per_model(model_name: str) -> Iterator[None]:
    """Hold the global concurrency slot `r2w-model-<name>` (limit 1, created on first use)."""
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
    with concurrency(name, occupy=1, strict=True, lease_duration=600):
        yield


def run_stage(summary: RunSummary, stage: str, task, *args):
    """Run a task, remember its final state name (Completed / Cached) and return its result."""
    state = task(*args, return_state=True)
    summary.stage_states[stage] = state.name
    return state.result()


def _retrain(cfg: R2WConfig) -> RunSummary:
    from evaluation.metrics import format_score
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
    from tasks.teach import teach_task

    log = get_run_logger()
    set_torch_threads(cfg.runtime.torch_threads)
    client = client_for(cfg)
    run_id = start_run(client, cfg, f"retrain-{cfg.name}", tags={"r2w.config_hash": cfg.hash})
    log_params(client, run_id, cfg.model_dump(mode="json"))
    summary = RunSummary(
        mlflow_run_id=run_id, config=cfg.name, model_name=cfg.registry.model_name, started_at=str(utcnow())
    )
    run_dir = cfg.data_path / "runs" / run_id
    lineage = {"config_hash": cfg.hash, "base_model": cfg.models.base, "mlflow_run": run_id}

    base_path = resolve_model(cfg.models.base, cfg.data_path)
    base = make_backend(cfg.models.backend, base_path, dtype=cfg.models.dtype, seed=cfg.runtime.seed)
    teacher = base
    if cfg.models.teacher or cfg.models.teacher_url:
        teacher_path = resolve_model(cfg.models.teacher or cfg.models.base, cfg.data_path)
        teacher = make_backend(
            cfg.models.backend, teacher_path, dtype=cfg.models.dtype, url=cfg.models.teacher_url, seed=cfg.runtime.seed
        )

    # 1. collect failures of the base agent
    collected = run_stage(summary, "collect", collect_task, cfg, base, "base", source_fingerprint(cfg))
    if cfg.collect.since or cfg.collect.until:
        client.set_tag(run_id, "r2w.window", f"{cfg.collect.since or ''}/{cfg.collect.until or ''}")
    failures = load_records(collected.failures, Episode)
    summary.episodes, summary.failures = collected.n_episodes, collected.n_failures
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
    lineage["hint_snapshot"] = snapshot

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
    examples_ref = save_records(examples, cfg.data_path / "datasets", "distill-examples", {"leakage": leakage})
    summary.training_examples = sum(e.split == "train" for e in examples)
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
    student = run_stage(
        summary, "train", train_task, examples, start.path, cfg.distill, student_dir, cfg.runtime.seed, True, *parent
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
    student_backend = make_backend("transformers", start.path, adapter_path=student.adapter_dir, dtype=cfg.models.dtype)
    evaluation = run_stage(summary, "evaluate", evaluate_task, cfg, base, student_backend, store.retrieve, snapshot)
    report, report_dir = run_stage(summary, "gate", gate_task, cfg, evaluation, leakage, run_dir, lineage)
    summary.scores = {s.policy: format_score(s) for s in evaluation.scores}
    summary.gate_passed, summary.reasons = report.passed, report.reasons
    summary.report_path = str(report_dir / "gate_report.md")
    log_metrics(
        client,
        run_id,
        {
            **{f"eval.{s.policy}.success": s.rate for s in evaluation.scores},
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


def _stop(client, run_id: str, summary: RunSummary, reason: str, tag: str = "not-run") -> RunSummary:
    client.set_tag(run_id, "r2w.gate", tag)
    client.set_tag(run_id, "r2w.stop_reason", reason)
    client.set_terminated(run_id)
    summary.reasons = [reason]
    summary.finished_at = str(utcnow())
    return summary


if __name__ == "__main__":
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else "demo").model_dump_json(indent=2))
