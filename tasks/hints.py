"""Stage: failed episodes -> extracted hints -> the hint store (plus human-curated packs).

`extract_and_store` is a plain function (tests call it); `hints_task` is its thin Prefect wrapper.
`extraction_inputs` gathers, before the stage (so they enter its cache key), what the extractor is
shown besides each failure: a verified success to contrast it with (`hints.extractor.mode:
contrastive`), the environment's correct actions, and the compiled program `latest` points at.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field
from rapidfuzz import fuzz

from evaluation.environments import make_environment
from prompts.hints import episode_replies, extract_hints
from prompts.optimize import load_extractor, program_hash
from r2w.caching import expensive_stage
from r2w.config import CONFIG_DIR, HintsConfig, R2WConfig
from r2w.contracts import Episode, SuccessReference, Trajectory
from r2w.datasets import DatasetRef, load_records
from r2w.environment import TaskSpec
from r2w.hint_screen import HintScreen, trace_injection
from r2w.hintstore import HintStore
from r2w.tool_calls import render_turn

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
    contrastive: int = 0  # failures extracted next to a verified success
    references: dict[str, int] = Field(default_factory=dict)  # source (teacher/base/gold) -> contrasts used
    gold_given: int = 0  # failures whose correct actions the extractor saw (contrast or feedback)
    program: str = ""  # content hash of the compiled extractor program used ('' = the plain program)

    def metrics(self) -> dict[str, float]:
        return {
            "hints.extracted": self.extracted,
            "hints.contrastive": self.contrastive,
            "hints.gold_given": self.gold_given,
            **{f"hints.references.{source}": n for source, n in self.references.items()},
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
    references: dict[str, SuccessReference] | None = None,
) -> HintsResult:
    """Import curated packs, then extract from at most `max_failures` failures and upsert the hints.

    `references`: failure episode id -> a verified success to contrast it with (used only in
    `hints.extractor.mode: contrastive`); `gold_actions`: failure episode id -> correct actions.
    """

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
    module, program_id = None, ""
    if hints_cfg.extractor.program and hints_cfg.extractor.program != "latest" and chosen:
        program = resolve_pack(hints_cfg.extractor.program, "hints.extractor.program")
        module = load_extractor(program)
        program_id = program_hash(program) if program.stem.startswith("extractor-") else program.stem
        extractor_id = f"{extractor_id}+{program.stem}"  # provenance names the compiled program
    contrasts: dict[str, SuccessReference] = {}
    if hints_cfg.extractor.mode == "contrastive":
        for e in chosen:  # a success is model output too: one that talks to the pipeline is not shown
            ref = (references or {}).get(e.episode_id)
            if ref is not None and not screen.injection_kinds("\n".join([ref.start, *ref.actions, *ref.replies])):
                contrasts[e.episode_id] = ref
    gold = {e.episode_id: (gold_actions or {})[e.episode_id] for e in chosen if (gold_actions or {}).get(e.episode_id)}
    hints, rejected = (
        extract_hints(chosen, lm, hints_cfg.max_chars, extractor_id, run_id, gold, module, contrasts)
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
        contrastive=len(contrasts),
        references=dict(Counter(r.source for r in contrasts.values())),
        gold_given=len({*gold, *(i for i, r in contrasts.items() if r.source == "gold")}),
        program=program_id,
    )


def select_failures(episodes: list[Episode], limit: int) -> list[Episode]:
    """Failed episodes, one per task first (more varied lessons), then the rest, in input order."""
    failed = [e for e in episodes if not e.success]
    seen: set[str] = set()
    first = [e for e in failed if not (e.task_id in seen or seen.add(e.task_id))]
    rest = [e for e in failed if e not in first]
    return (first + rest)[:limit]


class ExtractionInputs(BaseModel):
    """What the hints stage is given besides the failures (computed before it: part of its cache key)."""

    hints_cfg: HintsConfig
    references: dict[str, SuccessReference] = Field(default_factory=dict)
    gold_actions: dict[str, list[str]] = Field(default_factory=dict)


def extraction_inputs(
    cfg: R2WConfig, failures: list[Episode], episodes: DatasetRef | None = None, earlier_teach: tuple[str, ...] = ()
) -> ExtractionInputs:
    """Successes to contrast the failures with, their correct actions, and the program `latest` names.

    Successes, best first: a verified success of the same task (the shortest; teacher trajectories of
    the earlier rounds' teach datasets named by hash in `earlier_teach`, or the base's successful
    rollouts in `episodes`), else the environment's gold path replayed and verified, else the most
    similar success of the same category. Only the failures the stage may extract from are paired.
    Earlier rounds are named, not globbed: a killed run's leftovers must not change what a rerun extracts.
    """
    chosen = select_failures(failures, 2 * cfg.hints.max_failures)
    gold = gold_paths(cfg, chosen)
    successes = earlier_successes(cfg, episodes, earlier_teach)
    references: dict[str, SuccessReference] = {}
    for failure in chosen:
        ref = pick_success(failure, successes) or gold.get(failure.episode_id) or pick_success(failure, successes, True)
        if ref is not None:
            references[failure.episode_id] = ref
    actions = {i: r.actions for i, r in gold.items()}
    return ExtractionInputs(hints_cfg=resolve_program(cfg), references=references, gold_actions=actions)


def earlier_successes(
    cfg: R2WConfig, episodes: DatasetRef | None, earlier_teach: tuple[str, ...] = ()
) -> list[tuple[str, Episode]]:
    """(source, episode) for every verified success at hand: the named earlier teach datasets' kept
    trajectories (one that is gone is skipped), then the base's successful rollouts of this round."""
    found: list[tuple[str, Episode]] = []
    for digest in filter(None, earlier_teach):
        folder = cfg.data_path / "datasets" / "trajectories" / digest[:16]
        if (folder / "manifest.json").is_file():
            found += [("teacher", t.episode) for t in load_records(folder, Trajectory) if t.episode.success]
    if episodes is not None:
        found += [("base", e) for e in load_records(episodes, Episode) if e.success]
    return found


def pick_success(
    failure: Episode, successes: list[tuple[str, Episode]], similar: bool = False
) -> SuccessReference | None:
    """The shortest success of the same task (`similar`: of another task of the same env and category, the one
    whose task text and start read most alike)."""
    if similar:
        pool = [(s, e) for s, e in successes if (e.env, e.category) == (failure.env, failure.category)
                and e.task_id != failure.task_id]  # fmt: skip
        start = _start(failure)
        best = max(pool, key=lambda p: (fuzz.token_set_ratio(start, _start(p[1])), -len(p[1].steps)), default=None)
    else:
        pool = [(s, e) for s, e in successes if e.task_id == failure.task_id and e.env == failure.env]
        best = min(pool, key=lambda p: len(p[1].steps), default=None)
    if best is None:
        return None
    source, episode = best
    return SuccessReference(
        source=source,
        task_id=episode.task_id,
        same_task=not similar,
        actions=[s.action for s in episode.steps],
        replies=episode_replies(episode),
        start=_start(episode),
        episode_id=episode.episode_id,
    )


def _start(episode: Episode) -> str:
    return f"{episode.task}\n{episode.steps[0].observation if episode.steps else ''}"


def task_of(episode: Episode) -> TaskSpec:
    """The task an episode played (its task id is env/category/split/<name or seed>)."""
    last = episode.task_id.rsplit("/", 1)[-1]
    return TaskSpec(
        episode.env, episode.category, episode.split, episode.seed, "" if last == str(episode.seed) else last
    )


def gold_paths(cfg: R2WConfig, failures: list[Episode]) -> dict[str, SuccessReference]:
    """The environment's own solution of each failed task, replayed: kept only where it verifiably succeeds.

    Text games: `gold_actions()`; chat environments: `gold_turn()` / `gold_turns()` (BFCL). Failures of
    another environment (imported traces), or an environment that offers no gold path (a team's plugin
    without one, the `trace_replay` sandbox), get none.
    """
    if not failures:
        return {}
    factory = make_environment(cfg.env, failures, require_gold=False)  # built as the teach stage builds it
    chat = getattr(factory, "kind", "text") == "chat"
    mine = [f for f in failures if f.env == factory.name]
    env = factory.make() if mine else None
    if env is None or not any(hasattr(env, m) for m in GOLD_METHODS):
        return {}
    out: dict[str, SuccessReference] = {}
    try:
        for failure in mine:
            ref = _replay_chat_gold(env, failure) if chat else _replay_gold(env, failure)
            if ref is not None:
                out[failure.episode_id] = ref
    finally:
        env.close()
    return out


GOLD_METHODS = ("gold_actions", "gold_turn", "gold_turns")  # what an environment offers its solution by


def _replay_gold(env, failure: Episode) -> SuccessReference | None:
    text, obs = env.reset(task_of(failure))
    actions = list(env.gold_actions()) if hasattr(env, "gold_actions") else []
    replies = []
    for action in actions:
        if obs.done:
            break
        obs = env.step(action)
        replies.append(obs.text)
    if not actions or not obs.success:
        return None
    return SuccessReference(source="gold", task_id=failure.task_id, same_task=True, actions=actions[: len(replies)],
                            replies=replies, start=f"{text}\n{_first_obs(failure)}")  # fmt: skip


def _replay_chat_gold(env, failure: Episode) -> SuccessReference | None:
    start = env.reset(task_of(failure))
    if hasattr(env, "gold_turns"):
        turns = [t for user_turn in env.gold_turns() for t in user_turn]
    elif hasattr(env, "gold_turn"):
        turns = [env.gold_turn()]
    else:
        return None
    actions, replies, result = [], [], None
    for turn in turns:
        result = env.step(turn)
        actions.append(render_turn(turn))
        replies.append(" ".join(m.content for m in result.messages))
        if result.done:
            break
    if result is None or not result.success:
        return None
    first = " ".join(m.content for m in start.messages)
    return SuccessReference(source="gold", task_id=failure.task_id, same_task=True, actions=actions,
                            replies=replies, start=first)  # fmt: skip


def _first_obs(episode: Episode) -> str:
    return episode.steps[0].observation if episode.steps else ""


LATEST = "latest"  # the optimize flow's pointer file under <data_dir>/prompts


def resolve_program(cfg: R2WConfig) -> HintsConfig:
    """hints with `extractor.program: latest` replaced by the program the optimize flow made last (its path
    enters the stage's cache key), or by none when it has made none yet."""
    ex = cfg.hints.extractor
    if ex.program != LATEST:
        return cfg.hints
    pointer = cfg.data_path / "prompts" / LATEST
    path = (cfg.data_path / "prompts" / pointer.read_text().strip()) if pointer.is_file() else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"hints.extractor.program=latest: {pointer} names {path.name}, which is missing")
    return cfg.hints.model_copy(update={"extractor": ex.model_copy(update={"program": str(path) if path else None})})


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
