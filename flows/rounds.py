"""Rounds that move forward: a scheduled run learns from what is new since the previous round.

The previous round of a model is its newest completely registered version (a version a killed
run left `pending` is that run's own round: its rerun resumes that range and adopts the version);
its lineage records what it learned from (r2w/registry.py `Lineage`): `task_range` ("a:b", train
tasks [a, b)) for rollouts, `window` ("since/until") for imported traces.

- `collect.offset: auto` -> the round starts at the previous round's task-range end (0 for the
  first round), or past a later range a round consumed; the round uses train tasks
  [offset, offset + max(collect.episodes, teach.tasks)).

A round that registers nothing does not move the offset: a student that failed its gates (or a
round stopped for want of hints or teacher successes) learned nothing that was kept, so the next
round plays the same tasks again (its run is tagged `r2w.round=retry`); unchanged inputs make that
retry cheap (every stage cached) and the gate says again why, until a person changes hints or
config. The one exception is a range with nothing to learn: when the base agent had no failure on
it, the run is tagged `r2w.round=consumed` (with its stop reason) and the next round moves past it,
or a schedule would replay a solved range forever.
- `collect.since: auto` -> the round's window starts at the previous round's window end, or, for an
  open-ended window, at the previous round's start time (everything, for the first round).

`auto` is resolved into the config before anything runs, so the resolved offset/window enter every
stage's cache key and the config hash recorded in lineage. A run whose config, failures and hint
snapshot are those a registered version was trained on stops early: nothing new (flows/cadence.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from r2w.config import R2WConfig
from r2w.registry import Lineage, Tag
from r2w.tracking import client_for


class PreviousRound(BaseModel):
    version: str
    lineage: Lineage
    started_at: str = ""  # ISO time its MLflow run started


def previous_round(cfg: R2WConfig, client) -> PreviousRound | None:
    """The newest completely registered version of the config's model, with its lineage."""
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    versions = [v for v in versions if v.tags.get(Tag.REGISTRATION) != "pending"]
    if not versions:
        return None
    last = max(versions, key=lambda v: int(v.version))
    started = ""
    if last.run_id:
        start_ms = client.get_run(last.run_id).info.start_time
        started = datetime.fromtimestamp(start_ms / 1000, tz=UTC).isoformat()
    return PreviousRound(version=str(last.version), lineage=Lineage.from_tags(last.tags), started_at=started)


def next_round(cfg: R2WConfig) -> tuple[R2WConfig, PreviousRound | None]:
    """The config with `collect.offset` / `collect.since` = auto resolved past the previous round."""
    client = client_for(cfg)
    previous = previous_round(cfg, client)
    c, update = cfg.collect, {}
    if c.offset == "auto":
        start = range_end(previous.lineage.task_range) if previous else 0
        update["offset"] = max([start, *consumed_range_ends(cfg, client)])
    if c.since == "auto":
        update["since"] = window_end(previous) if previous else None
    if update:
        cfg = cfg.model_copy(update={"collect": c.model_copy(update=update)})
    return cfg, previous


def consumed_range_ends(cfg: R2WConfig, client) -> list[int]:
    """Ends of the task ranges that rounds of this model consumed without a student (no failures on them)."""
    experiment = client.get_experiment_by_name(cfg.registry.experiment)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{Tag.ROUND}` = 'consumed' and tags.`{Tag.MODEL}` = '{cfg.registry.model_name}'",
    )
    return [range_end(r.data.tags.get(Tag.TASK_RANGE, "")) for r in runs]


def range_end(task_range: str) -> int:
    """'a:b' -> b (a round without a recorded range, e.g. imported, used no train tasks: 0)."""
    return int(task_range.split(":")[1]) if ":" in task_range else 0


def window_end(previous: PreviousRound) -> str | None:
    until = previous.lineage.window.partition("/")[2]
    return until or previous.started_at or None


def round_lineage(cfg: R2WConfig, run_id: str, previous: PreviousRound | None) -> Lineage:
    """This round's lineage: what it learns from (task range or window) and the round it follows."""
    c, before = cfg.collect, previous.lineage if previous else Lineage()
    first = c.offset if isinstance(c.offset, int) else 0
    rollout = c.source == "rollout"
    return Lineage(
        config_hash=cfg.hash,
        base_model=cfg.models.base,
        mlflow_run=run_id,
        task_range=f"{first}:{first + max(c.episodes, cfg.teach.tasks)}" if rollout else "",
        window="" if rollout else f"{c.since or ''}/{c.until or ''}",
        previous_version=previous.version if previous else "",
        previous_hint_snapshot=before.hint_snapshot,
        previous_training_dataset=before.training_dataset,
    )
