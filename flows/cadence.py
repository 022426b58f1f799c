"""When is it worth retraining? Count what is new since the last registered version.

A deployment sets `cadence.min_new_failures` / `cadence.min_new_hints`; a run that finds less
stops after the cheap stages (collect, hints) and says why. New failures are episode ids absent
from the failures dataset of the newest registered version; new hints are active hints created
after that version.

Whatever the cadence, a run whose inputs (config hash, failures dataset, hint snapshot) are those
a registered version was trained on stops there too: "nothing new since vN", never a second
version of the same inputs (its stages were cached, so the stop costs little).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from r2w.config import R2WConfig
from r2w.contracts import Episode, Hint
from r2w.datasets import load_records, verify_dataset
from r2w.registry import Lineage, Tag


class Novelty(BaseModel):
    new_failures: int
    new_hints: int
    since_version: str | None = None
    same_inputs_as: str | None = None  # a registered version trained on exactly these inputs

    def metrics(self) -> dict[str, float]:
        return {"cadence.new_failures": self.new_failures, "cadence.new_hints": self.new_hints}

    def worth_retraining(self, cfg: R2WConfig) -> bool:
        c = cfg.cadence
        if self.same_inputs_as:
            return False
        if c.min_new_failures == 0 and c.min_new_hints == 0:
            return True
        return self.new_failures >= c.min_new_failures > 0 or self.new_hints >= c.min_new_hints > 0

    def reason(self, cfg: R2WConfig) -> str:
        if self.same_inputs_as:
            return (
                f"skipped: nothing new since v{self.since_version}: the config ({cfg.hash}), failures and hint "
                f"snapshot are those v{self.same_inputs_as} was trained on (nothing registered)"
            )
        return (
            f"skipped: {self.new_failures} new failures (need {cfg.cadence.min_new_failures}) and "
            f"{self.new_hints} new hints (need {cfg.cadence.min_new_hints}) since version "
            f"{self.since_version or '-'}"
        )


def novelty_since_last_version(
    cfg: R2WConfig, client, failures: list[Episode], hints: list[Hint], lineage: Lineage | None = None
) -> Novelty:
    """What is new since the newest registered version; with `lineage` (this run's failures dataset and
    hint snapshot filled in), also which version, if any, was trained on exactly these inputs."""
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    if not versions:
        return Novelty(new_failures=len(failures), new_hints=len(hints))
    last = max(versions, key=lambda v: int(v.version))
    same = None
    if lineage is not None:
        inputs = {f"r2w.{k}": getattr(lineage, k) for k in ("config_hash", "failures_dataset", "hint_snapshot")}
        # only a complete registration counts: a version a killed run left `pending` is adopted by this run's
        # register stage, which a "nothing new" stop would never reach
        complete = [v for v in versions if v.tags.get(Tag.REGISTRATION) != "pending"]
        same = next((str(v.version) for v in complete if all(v.tags.get(k) == x for k, x in inputs.items())), None)
    seen: set[str] = set()
    digest = Lineage.from_tags(last.tags).failures_dataset
    if digest:
        folder = cfg.data_path / "datasets" / "failures" / digest[:16]
        if folder.is_dir() and verify_dataset(folder) is None:  # deleted or damaged since: all failures are new
            seen = {e.episode_id for e in load_records(folder, Episode)}
    created = datetime.fromtimestamp(last.creation_timestamp / 1000, tz=UTC)
    return Novelty(
        new_failures=sum(e.episode_id not in seen for e in failures),
        new_hints=sum(h.created_at > created for h in hints),
        since_version=str(last.version),
        same_inputs_as=same,
    )
