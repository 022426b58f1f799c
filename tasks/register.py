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
from r2w.registry import CHALLENGER, Lineage, Tag, reconcile_pending, registered_model_exists
from r2w.tracking import artifact_dir_uri, client_for, registry_lock


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
    lineage: Lineage | dict[str, str],
) -> Registration:
    """Log the gate report and lineage to the run; register a passing student as `challenger`."""
    lineage = Lineage.model_validate(lineage)  # a dict of lineage fields is checked like the record
    client = client_for(cfg)
    name = cfg.registry.model_name
    client.log_artifacts(run_id, str(report_dir), "gate")
    client.set_tag(run_id, Tag.GATE, "passed" if report.passed else "failed")
    for key, value in lineage.tags().items():
        client.set_tag(run_id, key, value)
    if not report.passed:
        reason = "; ".join(report.reasons)
        client.set_tag(run_id, Tag.GATE_REASONS, reason[:5000])
        return Registration(registered=False, model_name=name, reason=f"gate failed: {reason}")
    if adapter_dir is None or merged_dir is None:
        return Registration(registered=False, model_name=name, reason="no trained student to register")
    client.log_artifacts(run_id, str(adapter_dir), "student/adapter")
    client.log_artifacts(run_id, str(merged_dir), "student/merged")
    description = (report_dir / "gate_report.md").read_text()
    tags = lineage.tags()
    tags.update({Tag.GATE: "passed", Tag.ADAPTER_URI: artifact_dir_uri(client, run_id, "student/adapter")})
    for check in report.checks:
        tags[f"{Tag.CHECK}{check.name}"] = f"{check.value:g} {check.comparison} {check.threshold:g}: " + (
            "pass" if check.passed else "fail"
        )
    with registry_lock(cfg):
        if not registered_model_exists(client, name):
            client.create_registered_model(name, description="r2w students (hint-free), reviewed before promotion")
        version = reconcile_pending(client, name, lineage.student)
        if version is not None:
            client.set_model_version_tag(name, version, Tag.ADOPTED_BY_RUN, run_id)
        else:
            version = client.create_model_version(
                name,
                source=artifact_dir_uri(client, run_id, "student/merged"),
                run_id=run_id,
                tags={**tags, Tag.REGISTRATION: "pending"},
                description=description,
            ).version
            fault_point("register:before_alias")
        client.set_registered_model_alias(name, CHALLENGER, version)
        client.set_model_version_tag(name, version, Tag.REGISTRATION, "complete")
    client.set_tag(run_id, Tag.REGISTERED_VERSION, str(version))
    return Registration(registered=True, model_name=name, version=str(version), reason="all gates passed")


register_task = task(name="register", cache_policy=NO_CACHE)(register_student)
