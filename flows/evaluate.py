"""The `evaluate` flow: re-gate a registered version against the current suites and gates.

    r2w evaluate VERSION --config demo

Loads the version's adapter from the registry, plays the same held-out suites as `retrain`,
applies today's gate policy, logs a new run with the report and tags the version with the
verdict. It never moves an alias: a person decides what to do with the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow
from pydantic import BaseModel

from r2w.backends import make_backend
from r2w.caching import results_under
from r2w.config import R2WConfig, load_config
from r2w.contracts import utcnow
from r2w.hintstore import HintStore
from r2w.models import resolve_model
from r2w.registry import Lineage, Tag, student_base_for
from r2w.runtime import configure_environment, set_torch_threads
from r2w.tracking import client_for, log_metrics, start_run
from tasks.gate import evaluate_task, gate_task


class ReGate(BaseModel):
    version: str
    passed: bool
    reasons: list[str]
    mlflow_run_id: str
    report_path: str


def registered_student(cfg: R2WConfig, version: str) -> tuple[Path, Path]:
    """(the weights the version's adapter was trained on, the adapter folder), both local.

    A version trained with `distill.init_from: champion` sits on the champion's merged model,
    not on the configured base: its lineage names that parent version.
    """
    name = cfg.registry.model_name
    mv = client_for(cfg).get_model_version(name, version)
    adapter_uri = mv.tags.get(Tag.ADAPTER_URI)
    if not adapter_uri:
        raise ValueError(f"{name} version {version}: no {Tag.ADAPTER_URI} tag (not registered by r2w?)")
    local = Path(cfg.data_path / "registry-cache" / name / str(version))
    local.mkdir(parents=True, exist_ok=True)
    adapter = mlflow.artifacts.download_artifacts(artifact_uri=adapter_uri, dst_path=str(local))
    return student_base_for(cfg, Lineage.from_tags(mv.tags)), Path(adapter)


@flow(name="evaluate")
def evaluate_version(version: str, config: str = "demo", overrides: dict[str, Any] | None = None) -> ReGate:
    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    set_torch_threads(cfg.runtime.torch_threads)
    client = client_for(cfg)
    name = cfg.registry.model_name
    mv = client.get_model_version(name, version)
    trained = Lineage.from_tags(mv.tags)
    base_path = resolve_model(trained.base_model or cfg.models.base, cfg.data_path)
    base = make_backend(cfg.models.backend, base_path, dtype=cfg.models.dtype, seed=cfg.runtime.seed)
    student_base, adapter = registered_student(cfg, version)
    student = make_backend("transformers", student_base, adapter_path=adapter, dtype=cfg.models.dtype)
    store = HintStore(cfg.hints, cfg.data_path)
    run_id = start_run(client, cfg, f"evaluate-v{version}", tags={Tag.EVALUATES_VERSION: str(version)})
    with results_under(cfg.data_path):  # cached evaluations live under this project's data dir
        evaluation = evaluate_task(cfg, base, student, store.retrieve, store.snapshot_id())
    leakage = {
        k.removeprefix("leakage."): int(v)
        for k, v in client.get_run(mv.run_id).data.metrics.items()
        if k.startswith("leakage.")
    }
    lineage = Lineage(
        evaluated_version=str(version),
        hint_snapshot=store.snapshot_id(),
        config_hash=cfg.hash,
        student_base=str(student_base),
        parent_version=trained.parent_version,
    )
    report, report_dir = gate_task(cfg, evaluation, leakage, cfg.data_path / "runs" / run_id, lineage)
    client.log_artifacts(run_id, str(report_dir), "gate")
    log_metrics(client, run_id, evaluation.metrics())
    verdict = "passed" if report.passed else "failed"
    client.set_tag(run_id, Tag.GATE, verdict)
    client.set_model_version_tag(name, version, Tag.REGATE, f"{verdict} at {utcnow():%Y-%m-%dT%H:%M} (run {run_id})")
    client.set_terminated(run_id)
    return ReGate(
        version=str(version),
        passed=report.passed,
        reasons=report.reasons,
        mlflow_run_id=run_id,
        report_path=str(report_dir / "gate_report.md"),
    )
