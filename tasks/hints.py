"""Stage: failed episodes -> extracted hints -> the hint store (plus human-curated packs).

`extract_and_store` is a plain function (tests call it); `hints_task` is its thin Prefect wrapper.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from prompts.hints import extract_hints
from prompts.optimize import load_extractor
from r2w.caching import expensive_stage
from r2w.config import CONFIG_DIR, HintsConfig
from r2w.contracts import Episode
from r2w.hint_screen import HintScreen, trace_injection
from r2w.hintstore import HintStore

PROJECT_ROOT = CONFIG_DIR.parent


class HintsResult(BaseModel):
    extracted: int = 0  # valid hints the extractor produced (before dedup)
    rejected: dict[str, int] = Field(default_factory=dict)  # reason -> count
    added: int = 0
    merged: int = 0
    curated_imported: int = 0  # curated records read from the packs (new or already stored)
    quarantined: list[str] = Field(default_factory=list)  # failures with injection text: never extracted from
    quarantine_kinds: dict[str, int] = Field(default_factory=dict)  # injection kind -> failures carrying it
    active_hints: int = 0
    snapshot_id: str = "empty"

    def metrics(self) -> dict[str, float]:
        return {
            "hints.extracted": self.extracted,
            "hints.rejected": sum(self.rejected.values()),
            "hints.active": self.active_hints,
            **{f"hints.rejected.{metric_key(reason)}": n for reason, n in self.rejected.items()},
            "hints.quarantined_failures": len(self.quarantined),
            **{f"hints.quarantined.{kind}": n for kind, n in self.quarantine_kinds.items()},
        }


def metric_key(reason: str) -> str:
    """A free-text reason as an MLflow metric name (letters, digits and _-. only)."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in reason.replace(" ", "_"))


def extract_and_store(
    failures: list[Episode],
    hints_cfg: HintsConfig,
    store: HintStore,
    lm,
    extractor_id: str,
    run_id: str,
    gold_actions: dict[str, list[str]] | None = None,
) -> HintsResult:
    """Import curated packs, then extract from at most `max_failures` failures and upsert the hints."""

    curated = 0
    for pack in hints_cfg.curated_packs:
        curated += store.import_jsonl(resolve_pack(pack), source_label="curated")["lines"]
    screen = HintScreen(hints_cfg)
    quarantined: list[str] = []
    kinds: Counter[str] = Counter()
    clean: list[Episode] = []
    for episode in failures:  # untrusted text that talks to the pipeline never reaches the extractor
        found = trace_injection(episode, screen) if not episode.success else []
        if found:
            quarantined.append(episode.episode_id)
            kinds.update(found)
        else:
            clean.append(episode)
    chosen = select_failures(clean, hints_cfg.max_failures)
    module = None
    if hints_cfg.extractor.program and chosen:
        program = resolve_pack(hints_cfg.extractor.program, "hints.extractor.program")
        module = load_extractor(program)
        extractor_id = f"{extractor_id}+{program.stem}"  # provenance names the compiled program
    hints, rejected = (
        extract_hints(chosen, lm, hints_cfg.max_chars, extractor_id, run_id, gold_actions, module)
        if chosen
        else ([], {})
    )
    rejected = dict(rejected)
    passed = []
    for hint in hints:
        reason = screen.reason(hint.applicability, hint.text)
        if reason is None:
            passed.append(hint)
        else:
            rejected[f"screen_{reason}"] = rejected.get(f"screen_{reason}", 0) + 1
    hints = passed
    counts = store.upsert(hints, run_id)
    return HintsResult(
        extracted=len(hints),
        rejected=rejected,
        added=counts["added"],
        merged=counts["merged"],
        curated_imported=curated,
        quarantined=quarantined,
        quarantine_kinds=dict(kinds),
        active_hints=len(store.list(status="active")),
        snapshot_id=store.snapshot_id(),
    )


def select_failures(episodes: list[Episode], limit: int) -> list[Episode]:
    """Failed episodes, one per task first (more varied lessons), then the rest, in input order."""
    failed = [e for e in episodes if not e.success]
    seen: set[str] = set()
    first = [e for e in failed if not (e.task_id in seen or seen.add(e.task_id))]
    rest = [e for e in failed if e not in first]
    return (first + rest)[:limit]


def resolve_pack(pack: str | Path, field: str = "hints.curated_packs") -> Path:
    """A pack (or program) path as given, else relative to the project root (configs/hints/...)."""
    path = Path(pack).expanduser()
    if path.is_file():
        return path
    bundled = PROJECT_ROOT / path
    if bundled.is_file():
        return bundled
    raise FileNotFoundError(f"{field}: {pack} not found (also tried {bundled})")


def store_lost_hints(result: HintsResult, inputs: dict) -> str | None:
    """A cached extraction is stale when the store it filled has fewer hints than it left there (the Chroma
    folder was deleted or replaced since): rerun it, or the teacher would run without its hints."""
    store = inputs.get("store")
    if store is None or not result.active_hints:
        return None
    count = store.count()
    if count >= result.active_hints:
        return None
    return f"hint store {store.identity} holds {count} hints, the cached extraction left {result.active_hints}"


hints_task = task(**expensive_stage("extract-hints", ignore=("run_id",), check=store_lost_hints))(extract_and_store)
