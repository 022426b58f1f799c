"""The MLflow registry as r2w uses it: alias and tag names, lineage, promotion, status queries.

Every `r2w.*` tag that one module writes and another reads is named here, so the contract
between registering (tasks/register.py), re-gating (flows/evaluate.py), cadence and `r2w status`
is written down once. mlflow is imported inside the functions that call it: it reads its settings
at import (r2w/runtime.py), and light modules (benchmarks, the CLI's help) read the tag names here.
Nothing in r2w moves `champion` except `promote_version`/`rollback_champion`,
which only the human `r2w promote` / `r2w rollback` commands call.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from r2w.config import R2WConfig
from r2w.contracts import utcnow
from r2w.models import resolve_model
from r2w.tracking import (
    KILLED_FOUND_AT,
    KILLED_FOUND_BY,
    OWNER_HOST,
    OWNER_PID,
    OWNER_STARTED,
    client_for,
    mark_dead_runs,
    registry_lock,
)
from r2w.training import write_atomically

CHALLENGER = "challenger"
CHAMPION = "champion"


class Tag:
    """Run and model-version tag names (strings MLflow stores; one place to read them)."""

    GATE = "r2w.gate"  # passed | failed | skipped | not-run
    GATE_REASONS = "r2w.gate_reasons"
    STOP_REASON = "r2w.stop_reason"
    ERROR = "r2w.error"
    WINDOW = "r2w.window"
    QUARANTINED = "r2w.quarantined_failures"
    REGISTERED_VERSION = "r2w.registered_version"
    ADAPTER_URI = "r2w.adapter_uri"
    CHECK = "r2w.check."  # + check name
    REGISTRATION = "r2w.registration"  # pending (created, no alias yet) -> complete
    ADOPTED_BY_RUN = "r2w.adopted_by_run"
    CHAMPION_HISTORY = "r2w.champion_history"
    PROMOTED_BY = "r2w.promoted_by"
    PROMOTED_REASON = "r2w.promoted_reason"
    ROLLED_BACK = "r2w.rolled_back"
    REGATE = "r2w.regate"
    EVALUATES_VERSION = "r2w.evaluates_version"
    CONFIG_HASH = "r2w.config_hash"
    STAGE = "r2w.stage"  # on import runs: which stage wrote them
    MODEL = "r2w.model"  # on retrain runs: the registered model name the round is for
    TASK_RANGE = "r2w.task_range"  # on retrain runs from the start (lineage writes it again at register)
    ROUND = "r2w.round"  # registered | consumed (nothing to learn: no failures) | retry (rejected or stopped)
    # who owns a run, and who found it dead (written by r2w/tracking.py, which this module builds on)
    OWNER_PID, OWNER_STARTED, OWNER_HOST = OWNER_PID, OWNER_STARTED, OWNER_HOST
    KILLED_FOUND_BY, KILLED_FOUND_AT = KILLED_FOUND_BY, KILLED_FOUND_AT


class Lineage(BaseModel):
    """Where a student came from, stored as `r2w.<field>` tags on its run and its model version.

    `base_model` is the configured base; `student_base` is the model the adapter was trained on
    and must be loaded on (the champion's merged model when `distill.init_from: champion`), and
    `parent_version` the registered version that model came from (the weights' parent).

    Rounds (flows/rounds.py): `task_range` ("a:b", train tasks [a, b)) or `window` ("since/until")
    is what this round learned from; `previous_version` is the previous round's version of the same
    model (whatever the student was trained on), and `previous_hint_snapshot` /
    `previous_training_dataset` that round's hint snapshot and training dataset, so each round's
    inputs link to the round before.
    """

    model_config = ConfigDict(extra="forbid")

    config_hash: str = ""
    base_model: str = ""
    mlflow_run: str = ""
    student_base: str = ""
    parent_version: str = ""
    failures_dataset: str = ""
    hint_snapshot: str = ""
    trajectories_dataset: str = ""
    training_dataset: str = ""
    student: str = ""  # the student folder's name: lets a rerun adopt a version its killed predecessor created
    evaluated_version: str = ""  # set on re-gate runs (`r2w evaluate`)
    task_range: str = ""
    window: str = ""
    previous_version: str = ""
    previous_hint_snapshot: str = ""
    previous_training_dataset: str = ""

    def tags(self) -> dict[str, str]:
        return {f"r2w.{key}": value for key, value in self.model_dump().items() if value}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage:
        fields = {key: tags.get(f"r2w.{key}", "") for key in cls.model_fields}
        return cls(**fields)


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def registered_model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def aliases_by_version(client, name: str) -> dict[str, list[str]]:
    from mlflow.exceptions import MlflowException

    """version -> its aliases (search results do not carry aliases; the registered model does)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    out: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def reconcile_pending(client, name: str, student: str | None) -> str | None:
    """Finish what a killed registration left behind (call under the registry lock).

    A version tagged `r2w.registration=pending` was created by a process that died before it
    pointed `challenger` at it (the lock guarantees no live writer is mid-way). The same student
    is adopted (its version number is returned, nothing new is created); any other pending
    version is deleted, unless it already holds `challenger` (then only its tag was missing).
    """
    pending = client.search_model_versions(f"name='{name}' and tags.`{Tag.REGISTRATION}` = 'pending'")
    challenger = alias_version(client, name, CHALLENGER)
    adopted = None
    for mv in sorted(pending, key=lambda v: int(v.version)):
        version = str(mv.version)
        if adopted is None and student and mv.tags.get("r2w.student") == student:
            adopted = version
        elif version == challenger:
            client.set_model_version_tag(name, version, Tag.REGISTRATION, "complete")
        else:
            client.delete_model_version(name, version)
    return adopted


def promote_version(cfg: R2WConfig, version: str, by: str, reason: str) -> str | None:
    """Point `champion` at VERSION; only ever called from the human `r2w promote` command."""
    if not by.strip() or not reason.strip():
        raise ValueError("promote: --by and --reason are required (a person reviews every promotion)")
    client = client_for(cfg)
    name = cfg.registry.model_name
    client.get_model_version(name, version)  # fails clearly if the version does not exist
    with registry_lock(cfg):
        previous = alias_version(client, name, CHAMPION)
        history = json.loads(client.get_registered_model(name).tags.get(Tag.CHAMPION_HISTORY, "[]"))
        history.append({"version": version, "previous": previous, "by": by, "reason": reason, "at": str(utcnow())})
        client.set_registered_model_tag(name, Tag.CHAMPION_HISTORY, json.dumps(history)[-5000:])
        client.set_model_version_tag(name, version, Tag.PROMOTED_BY, by)
        client.set_model_version_tag(name, version, Tag.PROMOTED_REASON, reason)
        client.set_registered_model_alias(name, CHAMPION, version)
    return previous


def rollback_champion(cfg: R2WConfig, by: str, reason: str) -> str:
    """Move `champion` back to the version it pointed to before the last promotion."""
    client = client_for(cfg)
    name = cfg.registry.model_name
    with registry_lock(cfg):
        history = json.loads(client.get_registered_model(name).tags.get(Tag.CHAMPION_HISTORY, "[]"))
        if not history or not history[-1].get("previous"):
            raise ValueError(f"rollback: {name} has no earlier champion to return to")
        last = history.pop()
        client.set_registered_model_alias(name, CHAMPION, last["previous"])
        client.set_model_version_tag(name, last["version"], Tag.ROLLED_BACK, f"{by}: {reason}")
        client.set_registered_model_tag(name, Tag.CHAMPION_HISTORY, json.dumps(history))
    return last["previous"]


def version_model(cfg: R2WConfig, version: str) -> Path:
    """The merged model folder of a registered version, downloaded once (versions are immutable)."""
    name = cfg.registry.model_name
    mv = client_for(cfg).get_model_version(name, version)
    target = cfg.data_path / "models" / "versions" / f"{name}-v{mv.version}"
    if not (target / "config.json").is_file():
        write_atomically(target, lambda folder: _download_model(mv.source, cfg.tracking_uri, folder))
    return target


def champion_version(cfg: R2WConfig) -> str | None:
    return alias_version(client_for(cfg), cfg.registry.model_name, CHAMPION)


def student_base_for(cfg: R2WConfig, lineage: Lineage) -> Path:
    """The weights a version's adapter sits on: its parent version's merged model, else the base it names."""
    if lineage.parent_version:
        return version_model(cfg, lineage.parent_version)
    return resolve_model(lineage.base_model or cfg.models.base, cfg.data_path)


def _download_model(source: str, tracking_uri: str, folder: Path) -> None:
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder), tracking_uri=tracking_uri)
    )
    if local.resolve() != folder.resolve():
        for item in local.iterdir():
            shutil.move(str(item), str(folder / item.name))
        shutil.rmtree(local)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model version source {source}: no config.json, not a merged model folder")


class RunRow(BaseModel):
    run_id: str
    started: str
    status: str
    gate: str
    student_success: float | None
    version: str


class VersionRow(BaseModel):
    version: str
    aliases: list[str]
    run_id: str
    gate: str


def recent_runs(cfg: R2WConfig, limit: int = 5) -> list[RunRow]:
    """The newest runs of the config's experiment, for `r2w status`."""
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    if exp is None:
        return []
    mark_dead_runs(client, [exp.experiment_id], found_by="r2w status")  # a SIGKILLed run stays RUNNING otherwise
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    return [
        RunRow(
            run_id=r.info.run_id,
            started=datetime.fromtimestamp(r.info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
            status=r.info.status,
            gate=r.data.tags.get(Tag.GATE, "-"),
            student_success=r.data.metrics.get("eval.student.success"),
            version=r.data.tags.get(Tag.REGISTERED_VERSION, "-"),
        )
        for r in runs
    ]


def registered_versions(cfg: R2WConfig) -> list[VersionRow]:
    """Every version of the config's model with its aliases, oldest first."""
    client = client_for(cfg)
    name = cfg.registry.model_name
    aliases = aliases_by_version(client, name)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    return [
        VersionRow(
            version=str(v.version),
            aliases=aliases.get(str(v.version), []),
            run_id=v.run_id or "",
            gate=v.tags.get(Tag.GATE, "-"),
        )
        for v in versions
    ]
