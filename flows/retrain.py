"""The `retrain` flow: move the lessons of failed episodes into a hint-free student, in six steps.

    r2w run --config demo                 # CLI
    python -m flows.retrain demo          # same flow, no CLI

collect failures -> extract hints (Chroma) -> teach with hints -> distill hint-free (TRL + LoRA)
-> evaluate and gate -> register `challenger` (only if every gate passed; a person promotes).
Each step is a Prefect task in tasks/ (cached on its inputs, so a rerun resumes); `Run` (flows/run.py)
records each step's state and metrics in MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from evaluation.metrics import format_score
from flows.cadence import novelty_since_last_version
from flows.rounds import PreviousRound, next_round, round_lineage
from flows.run import Run, RunSummary, one_run_per_model, tracked_run
from prompts.hints import PROMPT_VERSION as HINTS_PROMPT_VERSION
from r2w.backends import agent_backends, make_student_backend
from r2w.backends.dspy_lm import make_extractor_lm
from r2w.config import R2WConfig, load_config
from r2w.contracts import Episode
from r2w.datasets import load_records
from r2w.hintstore import HintStore
from r2w.registry import Tag
from r2w.runstate import run_state
from r2w.runtime import configure_environment, set_torch_threads
from r2w.traces import log_dataset_input
from tasks.collect import collect_task, source_fingerprint, task_offset
from tasks.distill import build_examples_task, resolve_student_base, train_task
from tasks.gate import evaluate_task, gate_task
from tasks.hints import extraction_inputs, hints_task
from tasks.register import register_task
from tasks.replay import replay_task
from tasks.teach import teach_task


@flow(name="retrain")
def retrain(config: str = "demo", overrides: dict[str, Any] | None = None) -> RunSummary:
    """Collect -> extract hints -> teach -> distill -> evaluate/gate -> register.

    Runs hold a Prefect concurrency slot named after the registered model, so two runs for one
    model never interleave; expensive stages are cached, so a rerun resumes where one stopped.
    `collect.offset` / `collect.since` = auto start the round where the previous one ended (flows/rounds.py).
    """
    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    set_torch_threads(cfg.runtime.torch_threads)
    with one_run_per_model(cfg.registry.model_name, cfg.data_path / "locks"), run_state(cfg.data_path):
        cfg, previous = next_round(cfg)  # under the model's slot: no two rounds take one range
        with tracked_run(cfg) as run:
            return six_steps(cfg, run, previous)


# Keyword calls stay on two lines each (formatter off), so the six steps read top-down.
# fmt: off
def six_steps(cfg: R2WConfig, run: Run, previous: PreviousRound | None) -> RunSummary:
    log, summary, models = get_run_logger(), run.summary, agent_backends(cfg)
    lineage = round_lineage(cfg, run.id, previous)  # task range or window, and the previous round's version
    run.start_round(lineage)

    # 1. collect the base agent's failures (rolled out, or imported from traces in a window)
    collected = run.stage("collect", collect_task, cfg=cfg, backend=models.base, sources=source_fingerprint(cfg))
    failures = load_records(collected.failures, Episode)
    summary.episodes, summary.failures, summary.scrubbed = collected.n_episodes, len(failures), collected.scrubbed
    lineage.failures_dataset = collected.failures.hash
    log_dataset_input(run.client, run.id, collected.failures, failures)
    log.info("collected %d episodes, %d failures", collected.n_episodes, collected.n_failures)
    if not failures:
        window = f" in {cfg.collect.since or '-'}..{cfg.collect.until or '-'}" if lineage.window else ""
        since = f" since v{lineage.previous_version}" if lineage.previous_version else ""
        return run.stop(f"skipped: no failures{window}, nothing new{since} to learn", gate="skipped",
                        consumed=bool(lineage.task_range))  # a range the base agent solved: the next round moves on

    # 2. extract hints from the failures into auditable memory (Chroma)
    store = HintStore(cfg.hints, cfg.data_path)
    lm = make_extractor_lm(cfg.hints.extractor, *models.extractor())
    extractor_id = f"{lm.model.partition('/')[2]}/{HINTS_PROMPT_VERSION}"  # the model that wrote the hints
    earlier = (previous.lineage.trajectories_dataset,) if previous else ()  # the last round's teacher successes
    given = extraction_inputs(cfg, failures, collected.episodes, earlier)  # successes to contrast, gold, program
    hints = run.stage("hints", hints_task, failures=failures, hints_cfg=given.hints_cfg, store=store, lm=lm,
                      extractor_id=extractor_id, run_id=run.id, references=given.references,
                      gold_actions=given.gold_actions)
    lineage.extractor_program = hints.program  # the compiled extractor (r2w hints optimize) that wrote them
    active = store.list(status="active")  # read live, not from the cached result: a person may have curated it
    lineage.hint_snapshot = summary.hint_snapshot = store.snapshot_id()
    summary.hints_extracted, summary.hints_active = hints.extracted, len(active)
    summary.hints_rejected, summary.hints_rejected_by_reason = sum(hints.rejected.values()), dict(hints.rejected)
    summary.failures_quarantined = len(hints.quarantined)
    if hints.quarantined:
        run.tag(Tag.QUARANTINED, ",".join(hints.quarantined))
    if cfg.hints.k > 0 and not active:
        return run.stop(f"stopped: the hint store ({store.identity}) has no active hints after extraction "
                        f"({hints.extracted} extracted, {summary.hints_rejected} rejected); expected at least one for "
                        "the teacher (add hints.curated_packs, or set hints.k=0 to teach without hints)")
    novelty = novelty_since_last_version(cfg, run.client, failures, active, lineage)
    run.log(novelty.metrics())
    if not novelty.worth_retraining(cfg):
        return run.stop(novelty.reason(cfg), gate="skipped")

    # 3. teach: the teacher re-runs training tasks (imported failures' own, where replayable) with top-k hints
    imported = collected.failures if cfg.collect.source != "rollout" else None  # their own tasks, where replayable
    taught = run.stage("teach", teach_task, cfg=cfg, backend=models.teacher, retrieve=store.retrieve,
                       hint_snapshot=lineage.hint_snapshot, offset=task_offset(cfg), judge=models.base,
                       imported=imported)
    summary.teacher_attempts, summary.trajectories_kept = taught.attempts, taught.kept
    lineage.trajectories_dataset = taught.trajectories.hash

    # 4. distill: strip the hints, check leakage, train a LoRA student (sft | dpo | onpolicy)
    replay = None
    if cfg.distill.replay.examples and taught.kept:
        replay = run.stage("replay", replay_task, cfg=cfg, backend=models.base, replay=cfg.distill.replay)
    dataset = run.stage("build_examples", build_examples_task, cfg=cfg, taught=taught, collected=collected,
                        active_hints=active, replay=replay)
    summary.training_examples, lineage.training_dataset = dataset.n_train, dataset.examples.hash
    if dataset.n_train == 0:
        return run.stop(
            "no DPO pairs: no teacher success and failed base episode share a state (see leakage.*)"
            if cfg.distill.method == "dpo"
            else "no verified teacher successes to train on (nothing registered)"
        )
    start = resolve_student_base(cfg, models.base_path)  # init_from=champion: on the champion's merged model
    lineage.student_base, lineage.parent_version = str(start.path), start.parent_version or ""
    student = run.stage("train", train_task, cfg=cfg, dataset=dataset, start=start)
    run.log_series("train.loss", student.train_losses)  # the loss curve, one point per logged step
    lineage.student = Path(student.adapter_dir).parent.name  # lets a rerun adopt what a killed run registered

    # 5. evaluate hint-free on held-out tasks against base, base+hints and random; then the gates
    student_model = make_student_backend(cfg.models.backend, start.path, student.adapter_dir, student.merged_dir,
                                         cfg.models.dtype, cfg.runtime.seed)
    evaluation = run.stage("evaluate", evaluate_task, cfg=cfg, base_backend=models.base, student_backend=student_model,
                           retrieve=store.retrieve, hint_snapshot=lineage.hint_snapshot, imported=imported)
    report, report_dir = run.stage("gate", gate_task, cfg=cfg, evaluation=evaluation, leakage=dataset.leakage,
                                   out_dir=cfg.data_path / "runs" / run.id, lineage=lineage, hints=active,
                                   break_even=run.break_even(evaluation.scores))  # saved tokens/day vs round cost
    summary.scores = {s.policy: format_score(s) for s in evaluation.scores}
    summary.gate_passed, summary.reasons = report.passed, report.reasons
    summary.report_path = str(report_dir / "gate_report.md")

    # 6. register a student that passed every gate as `challenger` (registry writes last)
    registration = run.stage("register", register_task, cfg=cfg, run_id=run.id, report=report, report_dir=report_dir,
                             adapter_dir=Path(student.adapter_dir), merged_dir=Path(student.merged_dir),
                             lineage=lineage)
    summary.registered_version = registration.version
    summary.reasons = summary.reasons or ([] if registration.registered else [registration.reason])
    return run.finish()
# fmt: on


if __name__ == "__main__":
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else "demo").model_dump_json(indent=2))
