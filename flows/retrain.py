"""The `retrain` flow: move the lessons of failed episodes into a hint-free student.

    r2w run --config demo                 # CLI
    python -m flows.retrain demo          # same flow, no CLI

failures -> hints (Chroma) -> teacher rollouts with hints -> hint-free training set -> LoRA SFT
-> evaluate base/teacher/student -> gates -> register `challenger` (only if every gate passed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from r2w.backends import make_backend
from r2w.config import load_config
from r2w.contracts import Episode, Trajectory, content_hash
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


@flow(name="retrain")
def retrain(config: str = "demo", overrides: dict[str, Any] | None = None) -> RunSummary:
    """Collect -> extract hints -> teach -> distill -> evaluate/gate -> register."""
    from evaluation.metrics import format_score
    from prompts.hints import PROMPT_VERSION as HINTS_PROMPT_VERSION
    from r2w.backends.dspy_lm import make_extractor_lm
    from r2w.hintstore import HintStore
    from tasks.collect import collect_task
    from tasks.distill import build_examples_task, train_task
    from tasks.gate import evaluate_task, gate_task
    from tasks.hints import hints_task
    from tasks.register import register_task
    from tasks.teach import teach_task

    log = get_run_logger()
    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    set_torch_threads(cfg.runtime.torch_threads)
    client = client_for(cfg)
    run_id = start_run(client, cfg, f"retrain-{cfg.name}", tags={"r2w.config_hash": cfg.hash})
    log_params(client, run_id, cfg.model_dump(mode="json"))
    summary = RunSummary(mlflow_run_id=run_id, config=cfg.name, model_name=cfg.registry.model_name)
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
    collected = collect_task(cfg, base)
    failures = load_records(collected.failures, Episode)
    summary.episodes, summary.failures = collected.n_episodes, collected.n_failures
    lineage["failures_dataset"] = collected.failures.hash
    log.info("collected %d episodes, %d failures", collected.n_episodes, collected.n_failures)

    # 2. extract hints into auditable memory
    store = HintStore(cfg.hints, cfg.data_path)
    lm = make_extractor_lm(cfg.hints.extractor, base, model_name=Path(base_path).name)
    extractor_id = f"{cfg.hints.extractor.model or Path(base_path).name}/{HINTS_PROMPT_VERSION}"
    hints = hints_task(failures, cfg.hints, store, lm, extractor_id, run_id)
    summary.hints_extracted, summary.hints_active = hints.extracted, hints.active_hints
    summary.hints_rejected, summary.hint_snapshot = sum(hints.rejected.values()), hints.snapshot_id
    lineage["hint_snapshot"] = hints.snapshot_id

    # 3. teacher re-runs training tasks with retrieved hints; verified successes only
    taught = teach_task(cfg, teacher, store.retrieve, hints.snapshot_id)
    trajectories = load_records(taught.trajectories, Trajectory)
    summary.teacher_attempts, summary.trajectories_kept = taught.attempts, taught.kept
    lineage["trajectories_dataset"] = taught.trajectories.hash

    # 4. distill: strip hints, check leakage, train a LoRA student
    examples, leakage = build_examples_task(trajectories, store.list(status="active"), cfg.distill, cfg.runtime.seed)
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
        return _stop(client, run_id, summary, "no verified teacher successes to train on (nothing registered)")

    student_dir = (
        cfg.data_path / "students" / content_hash([examples_ref.hash, cfg.distill.model_dump(mode="json")])[:16]
    )
    student = train_task(examples, base_path, cfg.distill, student_dir, cfg.runtime.seed)
    log_metrics(
        client, run_id, {"train.final_loss": student.train_losses[-1], "train.tokens_per_s": student.tokens_per_s}
    )

    # 5. evaluate hint-free on held-out games, then gate
    student_backend = make_backend("transformers", base_path, adapter_path=student.adapter_dir, dtype=cfg.models.dtype)
    evaluation = evaluate_task(cfg, base, student_backend, store.retrieve)
    report, report_dir = gate_task(cfg, evaluation, leakage, run_dir, lineage)
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
    registration = register_task(
        cfg, run_id, report, report_dir, Path(student.adapter_dir), Path(student.merged_dir), lineage
    )
    summary.registered_version = registration.version
    if not registration.registered:
        summary.reasons = summary.reasons or [registration.reason]
    client.set_terminated(run_id)
    return summary


def _stop(client, run_id: str, summary: RunSummary, reason: str) -> RunSummary:
    client.set_tag(run_id, "r2w.gate", "not-run")
    client.set_tag(run_id, "r2w.stop_reason", reason)
    client.set_terminated(run_id)
    summary.reasons = [reason]
    return summary


if __name__ == "__main__":
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else "demo").model_dump_json(indent=2))
