"""Stage: measure each active hint's uplift on the teacher and retire the ones that hurt (ExpeL's downvote, measured).

For every active hint h (or the ones named), the teacher plays the same `hints.uplift.tasks` train
tasks of h's category, `samples` times each, in two arms that differ only in h:
- arms `alone`:  hints {h} vs {} (the {} arm is played once per category and shared);
- arms `ablate`: h plus the top-(k-1) other retrieved hints vs those same k-1 hints.
Attempts are paired by (task, sample index): `gained` = success only with h, `lost` = only without.
The exact McNemar test on those discordant pairs gives the p-value; a hint that lost more than it
gained with p < `hints.uplift.alpha` is retired through `HintStore.retire` (reason and evidence in
the audit log), unless a person reinstated it since its last retirement (`r2w hints enable` on a
retired hint is a recorded override that sticks). Each row also carries the hint's support: the
failures it was drawn from and the teacher episodes it was retrieved for (and how many succeeded).

The rows are stored as a content-hashed dataset (`hint-uplift`). Cost: (hints + categories) x tasks x
samples teacher episodes for `alone`, 2 x hints x tasks x samples for `ablate`.

    r2w hints uplift --config demo --tasks 8
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from evaluation.environments import make_environment
from evaluation.metrics import mcnemar_p, paired_difference, wilson_interval
from r2w.agent_prompt import render_hints_block
from r2w.backends import GenerationBackend
from r2w.config import R2WConfig
from r2w.contracts import Episode, Hint, Record
from r2w.datasets import DatasetRef, load_records, save_records
from r2w.environment import TaskSpec
from r2w.hintstore import HintStore
from r2w.rollout import agent_policy, run_chat_episodes, run_episodes

RETIRED_BY = "auto-retire:uplift"
log = logging.getLogger(__name__)


class HintUplift(Record):
    """One hint's paired measurement: rates with n and 95% intervals, the discordant pairs, the verdict."""

    hint_id: str
    category: str
    rule: str
    arms: Literal["alone", "ablate"]
    n: int  # paired attempts (task, sample)
    with_successes: int
    without_successes: int
    with_ci: tuple[float, float]
    without_ci: tuple[float, float]  # the baseline
    gained: int  # success only with the hint
    lost: int  # success only without it
    uplift: float  # rate(with) - rate(without), paired
    uplift_ci: tuple[float, float]
    p_value: float  # exact two-sided McNemar on (gained, lost)
    drawn_from: int = 0  # failures the hint was extracted from (its support)
    retrieved: int = 0  # teacher episodes (recent teach stages) whose prompt held it
    retrieved_successes: int = 0
    verdict: str = ""  # retired | kept | override:<who>
    reason: str = ""

    @property
    def rate_with(self) -> float:
        return self.with_successes / self.n if self.n else 0.0

    @property
    def rate_without(self) -> float:
        return self.without_successes / self.n if self.n else 0.0


class UpliftReport(BaseModel):
    rows: list[HintUplift] = Field(default_factory=list)
    retired: list[str] = Field(default_factory=list)
    episodes_played: int = 0
    dataset: DatasetRef | None = None

    def metrics(self) -> dict[str, float]:
        return {
            "uplift.hints": len(self.rows),
            "uplift.retired": len(self.retired),
            "uplift.episodes": self.episodes_played,
            **{f"uplift.{r.hint_id}": r.uplift for r in self.rows},
        }


def score_hint(
    hint: Hint, with_hint: list[Episode], without: list[Episode], arms: Literal["alone", "ablate"] = "alone"
) -> HintUplift:
    """The paired comparison of two arms' episodes (matched by task id and sample index)."""
    a = {(e.task_id, e.sample_index): e.success for e in with_hint}
    b = {(e.task_id, e.sample_index): e.success for e in without}
    keys = sorted(a.keys() & b.keys())
    if not keys:
        raise ValueError(f"uplift of {hint.hint_id}: the two arms share no (task, sample) attempt")
    table = Counter("both" if a[k] and b[k] else "only_a" if a[k] else "only_b" if b[k] else "neither" for k in keys)
    table = {key: table.get(key, 0) for key in ("both", "only_a", "only_b", "neither")}
    diff, low, high = paired_difference(table)
    wins_a, wins_b = sum(a[k] for k in keys), sum(b[k] for k in keys)
    return HintUplift(
        hint_id=hint.hint_id,
        category=hint.category,
        rule=f"{hint.applicability}: {hint.text}",
        arms=arms,
        n=len(keys),
        with_successes=wins_a,
        without_successes=wins_b,
        with_ci=wilson_interval(wins_a, len(keys)),
        without_ci=wilson_interval(wins_b, len(keys)),
        gained=table["only_a"],
        lost=table["only_b"],
        uplift=diff,
        uplift_ci=(low, high),
        p_value=mcnemar_p(table["only_a"], table["only_b"]),
        drawn_from=len(hint.provenance.episode_ids),
    )


def apply_verdicts(store: HintStore, rows: list[HintUplift], alpha: float, retire: bool = True) -> list[HintUplift]:
    """Retire each hint whose uplift is significantly negative (lost > gained, p < alpha), unless a person
    reinstated it; returns the rows with verdict and reason filled in."""
    out = []
    for row in rows:
        harmful = row.lost > row.gained and row.p_value < alpha
        reason = (
            f"uplift {row.uplift:+.2f} (95% CI {row.uplift_ci[0]:+.2f}..{row.uplift_ci[1]:+.2f}) on {row.n} paired "
            f"attempts ({row.arms}): lost {row.lost}, gained {row.gained}, exact McNemar p={row.p_value:.3g}"
        )
        verdict = "kept"
        if harmful:
            who = store.overridden_by(row.hint_id)
            if who is not None:
                verdict, reason = f"override:{who}", f"{reason} < {alpha}; kept: reinstated by {who}"
            elif retire:
                evidence = row.model_dump(mode="json", include={"n", "gained", "lost", "uplift", "p_value", "arms"})
                store.retire(row.hint_id, f"{reason} < {alpha}", by=RETIRED_BY, evidence=evidence)
                verdict, reason = "retired", f"{reason} < {alpha}"
            else:
                verdict, reason = "would retire", f"{reason} < {alpha} (hints.uplift.retire is off)"
        out.append(row.model_copy(update={"verdict": verdict, "reason": reason}))
    return out


def retrieval_support(data_path: Path) -> dict[str, tuple[int, int]]:
    """hint id -> (teacher episodes whose prompt held it, how many of them succeeded), over every stored
    teach stage. Each episode counts once (by id); no file times are read, so copying a data dir or a
    killed run's leftovers never reorders what counts. A damaged dataset is skipped with a warning."""
    seen: Counter[str] = Counter()
    won: Counter[str] = Counter()
    counted: set[str] = set()
    for manifest in sorted((data_path / "datasets" / "teacher-episodes").glob("*/manifest.json")):
        try:
            episodes = load_records(manifest.parent, Episode)
        except (OSError, ValueError) as exc:
            log.warning("uplift: support counts skip %s (%s)", manifest.parent, exc)
            continue
        for e in episodes:
            if e.episode_id in counted:
                continue
            counted.add(e.episode_id)
            seen.update(e.hint_ids)
            won.update(e.hint_ids if e.success else [])
    return {h: (seen[h], won[h]) for h in seen}


def measure_uplift(
    cfg: R2WConfig,
    teacher: GenerationBackend,
    store: HintStore,
    hint_ids: list[str] | None = None,
    tasks: int | None = None,
    samples: int | None = None,
    arms: Literal["alone", "ablate"] | None = None,
    retire: bool | None = None,
) -> UpliftReport:
    """Play both arms for every active hint (or `hint_ids`), score them paired, retire the harmful ones."""
    u = cfg.hints.uplift
    tasks, samples, arms = tasks or u.tasks, samples or u.samples, arms or u.arms
    retire = u.retire if retire is None else retire
    active = store.list(status="active")
    if hint_ids:
        missing = sorted(set(hint_ids) - {h.hint_id for h in active})
        if missing:
            raise ValueError(f"uplift: no active hint {missing} in collection {store.cfg.collection!r}")
        active = [h for h in active if h.hint_id in hint_ids]
    factory = make_environment(cfg.env)
    policy = agent_policy(cfg, teacher, "teacher", cfg.teach.temperature)
    runner = run_chat_episodes if getattr(factory, "kind", "text") == "chat" else run_episodes
    pool = factory.tasks("train", tasks * max(1, len(cfg.env.families)))
    played: list[int] = []

    def arm(category: str, with_hint: Hint | None, exclude: str, desc: str) -> list[Episode]:
        chosen = [t for t in pool if t.category == category][:tasks]
        if not chosen:
            raise ValueError(f"uplift: category {category!r} is not served by env {sorted({t.category for t in pool})}")
        others = cfg.hints.k - 1 if arms == "ablate" else 0

        def provide(task: TaskSpec, text: str, obs) -> tuple[list[str], str]:
            near = store.retrieve(task.category, f"{text}\n{obs.text}", others + 1) if others > 0 else []
            hints = ([with_hint] if with_hint else []) + [h for h in near if h.hint_id != exclude][:others]
            return [h.hint_id for h in hints], render_hints_block(hints)

        jobs = [(t, i) for t in chosen for i in range(samples)]
        episodes = runner(factory, jobs, policy, cfg.env.max_steps, cfg.agent.batch_size, config_hash=cfg.hash,
                          desc=desc, hints_for=provide)  # fmt: skip
        played.append(len(episodes))
        return episodes

    baselines: dict[str, list[Episode]] = {}
    support = retrieval_support(cfg.data_path)
    rows = []
    for hint in active:
        if arms == "alone":
            if hint.category not in baselines:
                baselines[hint.category] = arm(hint.category, None, "", f"uplift {hint.category}: no hints")
            without = baselines[hint.category]
        else:
            without = arm(hint.category, None, hint.hint_id, f"uplift {hint.hint_id}: without")
        with_hint = arm(hint.category, hint, hint.hint_id, f"uplift {hint.hint_id}: with")
        seen, won = support.get(hint.hint_id, (0, 0))
        row = score_hint(hint, with_hint, without, arms)
        rows.append(row.model_copy(update={"retrieved": seen, "retrieved_successes": won}))
    rows = apply_verdicts(store, rows, u.alpha, retire)
    meta = {"config_hash": cfg.hash, "arms": arms, "tasks": tasks, "samples": samples, "alpha": u.alpha}
    dataset = save_records(rows, cfg.data_path / "datasets", "hint-uplift", meta) if rows else None
    return UpliftReport(
        rows=rows,
        retired=[r.hint_id for r in rows if r.verdict == "retired"],
        episodes_played=sum(played),
        dataset=dataset,
    )
