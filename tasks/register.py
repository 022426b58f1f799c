"""Stage 6 - register: a student that passed every gate becomes a `challenger` version.

The gate report is always logged to the run; only a passing student is registered, with
lineage tags and the report as its description. Registry writes come last, under a lock.
Nothing here (or anywhere in r2w) sets `champion`: that takes `r2w promote` by a person.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from r2w.config import R2WConfig
from r2w.contracts import GateReport
from r2w.faults import fault_point
from r2w.tracking import artifact_dir_uri, client_for, registry_lock

CHALLENGER = "challenger"
REGISTRATION = "r2w.registration"  # pending (created, no alias yet) -> complete


class Registration(BaseModel):
    registered: bool
    model_name: str
    version: str | None = None
    reason: str = ""


def register_student(
    cfg: R2WConfig,
    run_id: str,
    report: GateReport,
    report_dir: Path,
    adapter_dir: Path | None,
    merged_dir: Path | None,
    lineage: dict[str, str],
) -> Registration:
    client = client_for(cfg)
    name = cfg.registry.model_name
    client.log_artifacts(run_id, str(report_dir), "gate")
    client.set_tag(run_id, "r2w.gate", "passed" if report.passed else "failed")
    for key, value in lineage.items():
        client.set_tag(run_id, f"r2w.{key}", value)
    if not report.passed:
        reason = "; ".join(report.reasons)
        client.set_tag(run_id, "r2w.gate_reasons", reason[:5000])
        return Registration(registered=False, model_name=name, reason=f"gate failed: {reason}")
    if adapter_dir is None or merged_dir is None:
        return Registration(registered=False, model_name=name, reason="no trained student to register")
    client.log_artifacts(run_id, str(adapter_dir), "student/adapter")
    client.log_artifacts(run_id, str(merged_dir), "student/merged")
    description = (report_dir / "gate_report.md").read_text()
    tags = {f"r2w.{k}": v for k, v in lineage.items()}
    tags.update({"r2w.gate": "passed", "r2w.adapter_uri": artifact_dir_uri(client, run_id, "student/adapter")})
    for check in report.checks:
        tags[f"r2w.check.{check.name}"] = f"{check.value:g} {check.comparison} {check.threshold:g}: " + (
            "pass" if check.passed else "fail"
        )
    with registry_lock(cfg):
        if not _registered_model_exists(client, name):
            client.create_registered_model(name, description="r2w students (hint-free), reviewed before promotion")
        version = reconcile_pending(client, name, tags.get("r2w.student"))
        if version is not None:
            client.set_model_version_tag(name, version, "r2w.adopted_by_run", run_id)
        else:
            version = client.create_model_version(
                name,
                source=artifact_dir_uri(client, run_id, "student/merged"),
                run_id=run_id,
                tags={**tags, REGISTRATION: "pending"},
                description=description,
            ).version
            fault_point("register:before_alias")
        client.set_registered_model_alias(name, CHALLENGER, version)
        client.set_model_version_tag(name, version, REGISTRATION, "complete")
    client.set_tag(run_id, "r2w.registered_version", str(version))
    return Registration(registered=True, model_name=name, version=str(version), reason="all gates passed")


def reconcile_pending(client, name: str, student: str | None) -> str | None:
    """Finish what a killed registration left behind (call under the registry lock).

    A version tagged `r2w.registration=pending` was created by a process that died before it
    pointed `challenger` at it (the lock guarantees no live writer is mid-way). The same student
    is adopted (its version number is returned, nothing new is created); any other pending
    version is deleted, unless it already holds `challenger` (then only its tag was missing).
    """
    from mlflow.exceptions import MlflowException

    pending = client.search_model_versions(f"name='{name}' and tags.`{REGISTRATION}` = 'pending'")
    try:
        challenger = str(client.get_model_version_by_alias(name, CHALLENGER).version)
    except MlflowException:
        challenger = None
    adopted = None
    for mv in sorted(pending, key=lambda v: int(v.version)):
        version = str(mv.version)
        if adopted is None and student and mv.tags.get("r2w.student") == student:
            adopted = version
        elif version == challenger:
            client.set_model_version_tag(name, version, REGISTRATION, "complete")
        else:
            client.delete_model_version(name, version)
    return adopted


def _registered_model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


register_task = task(name="register", cache_policy=NO_CACHE)(register_student)


CHAMPION = "champion"


def promote_version(cfg: R2WConfig, version: str, by: str, reason: str) -> str | None:
    """Point `champion` at VERSION; only ever called from the human `r2w promote` command."""
    import json

    from r2w.contracts import utcnow

    if not by.strip() or not reason.strip():
        raise ValueError("promote: --by and --reason are required (a person reviews every promotion)")
    client = client_for(cfg)
    name = cfg.registry.model_name
    client.get_model_version(name, version)  # fails clearly if the version does not exist
    with registry_lock(cfg):
        previous = _alias_version(client, name, CHAMPION)
        history = json.loads(client.get_registered_model(name).tags.get("r2w.champion_history", "[]"))
        history.append({"version": version, "previous": previous, "by": by, "reason": reason, "at": str(utcnow())})
        client.set_registered_model_tag(name, "r2w.champion_history", json.dumps(history)[-5000:])
        client.set_model_version_tag(name, version, "r2w.promoted_by", by)
        client.set_model_version_tag(name, version, "r2w.promoted_reason", reason)
        client.set_registered_model_alias(name, CHAMPION, version)
    return previous


def rollback_champion(cfg: R2WConfig, by: str, reason: str) -> str:
    """Move `champion` back to the version it pointed to before the last promotion."""
    import json

    client = client_for(cfg)
    name = cfg.registry.model_name
    with registry_lock(cfg):
        history = json.loads(client.get_registered_model(name).tags.get("r2w.champion_history", "[]"))
        if not history or not history[-1].get("previous"):
            raise ValueError(f"rollback: {name} has no earlier champion to return to")
        last = history.pop()
        client.set_registered_model_alias(name, CHAMPION, last["previous"])
        client.set_model_version_tag(name, last["version"], "r2w.rolled_back", f"{by}: {reason}")
        client.set_registered_model_tag(name, "r2w.champion_history", json.dumps(history))
    return last["previous"]


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
