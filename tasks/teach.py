"""Stage 3 - teach: re-run training tasks with retrieved hints in the prompt; keep verified successes.

"Verified" is the configured verifier's word (`verify:`, r2w/verifiers.py): the environment's own
verdict, a team's callable, or an LLM judge ranking each task's attempts against each other.

Hints are retrieved ONCE per episode, at its start (task + first observation as the query),
and placed in a delimited block of the system prompt; each kept trajectory records which
hints it saw.

Which tasks: the environment's train tasks of the round, except for imported failures, whose own tasks
are taught wherever the environment can restore them (r2w/environment.py `RestorableFactory`;
`trace_replay` replays any imported failure). Restored tasks of a held-out split are never taught.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from evaluation.environments import make_environment
from evaluation.metrics import score_episodes
from r2w.agent_prompt import extract_hints_block
from r2w.backends import GenerationBackend
from r2w.caching import expensive_stage
from r2w.config import R2WConfig
from r2w.contracts import TEACHER, Episode, Trajectory, content_hash
from r2w.datasets import DatasetRef, load_records, save_records
from r2w.environment import TaskSpec
from r2w.rollout import HintRetriever
from r2w.scaleout import play_agent
from r2w.verifiers import make_verifier, verify_episodes


class TeachResult(BaseModel):
    trajectories: DatasetRef
    episodes: DatasetRef
    attempts: int
    kept: int
    tasks_covered: int
    tasks: int
    single_sample_rate: float  # success of sample 0 only: the teacher's one-shot rate
    hint_snapshot: str
    tokens: int = 0  # prompt + completion tokens of every teacher attempt
    verified_by: str = "env"  # the verifier that decided which attempts were kept (env | callable:.. | judge:..)
    verify_malformed: int = 0  # tasks whose judge reply did not parse (none of their attempts kept)
    task_source: str = "env"  # env: the environment's train tasks; imports: the imported failures' own tasks
    not_restored: int = 0  # imported failures whose task the environment could not restore (or held out)
    workers: list[str] = []  # who played the attempts: in-process, or Dask workers (runtime.dask_address)

    def metrics(self) -> dict[str, float]:
        return {
            "teach.attempts": self.attempts,
            "teach.kept": self.kept,
            "teach.single_sample_rate": self.single_sample_rate,
            "teach.verify_malformed": self.verify_malformed,
            "teach.imported_tasks": self.tasks if self.task_source == "imports" else 0,
            "teach.not_restored": self.not_restored,
        }


def teach(
    cfg: R2WConfig,
    backend: GenerationBackend,
    retrieve: HintRetriever,
    hint_snapshot: str,
    offset: int = 0,
    judge: GenerationBackend | None = None,
    imported: DatasetRef | None = None,
) -> TeachResult:
    """Best-of-n hinted attempts on `teach.tasks` tasks: the imported failures' own (`imported`, the collect
    stage's failures dataset) where the environment restores them, else train tasks from `offset`; kept where
    the configured verifier accepts them (`judge` is the local judge model, default: `backend`)."""
    failures = load_records(imported, Episode) if imported is not None else None
    factory = make_environment(cfg.env, failures, require_gold=cfg.verify.kind == "env")
    tasks, source, not_restored = teach_tasks(cfg, factory, failures, offset)
    desc = f"teach (best-of-{cfg.teach.samples}, hints k={cfg.hints.k})"
    played = play_agent(cfg, factory, make_environment, tasks, backend, TEACHER, cfg.teach.temperature, desc,
                        samples=cfg.teach.samples, retrieve=retrieve)  # fmt: skip
    verifier = make_verifier(cfg.verify, judge or backend)
    try:
        episodes, _ = verify_episodes(verifier, played.episodes)
    finally:
        verifier.close()
    kept = [
        Trajectory(
            trajectory_id="t-" + content_hash(e.episode_id)[:16],
            episode=e,
            hint_ids=e.hint_ids,
            hints_block=extract_hints_block(e.steps[0].prompt) if e.steps else "",
        )
        for e in episodes
        if e.success
    ]
    root = Path(cfg.data_path) / "datasets"
    meta = {"hint_snapshot": hint_snapshot, "config_hash": cfg.hash, "samples": cfg.teach.samples}
    first = [e for e in episodes if e.sample_index == 0]
    return TeachResult(
        trajectories=save_records(kept, root, "trajectories", meta),
        episodes=save_records(episodes, root, "teacher-episodes", meta),
        attempts=len(episodes),
        kept=len(kept),
        tasks_covered=len({t.episode.task_id for t in kept}),
        tasks=len(tasks),
        single_sample_rate=score_episodes("teacher", first).rate,
        hint_snapshot=hint_snapshot,
        tokens=sum(e.total_tokens for e in episodes),
        verified_by=verifier.label,
        verify_malformed=verifier.malformed,
        task_source=source,
        not_restored=not_restored,
        workers=played.workers,
    )


def teach_tasks(
    cfg: R2WConfig, factory, failures: list[Episode] | None, offset: int
) -> tuple[list[TaskSpec], str, int]:
    """(tasks, "imports" | "env", imported failures not restored): the failures' own train tasks, deduplicated,
    up to `teach.tasks`, when the environment restores any; else the environment's train tasks from `offset`."""
    restore = getattr(factory, "restore", None)
    if failures and restore is not None:
        restored: dict[str, TaskSpec] = {}
        for episode in failures:
            task = restore(episode)
            if task is not None and task.split == "train":  # a held-out task is never taught
                restored.setdefault(task.task_id, task)
        if restored:
            return list(restored.values())[: cfg.teach.tasks], "imports", len(failures) - len(restored)
    return factory.tasks("train", cfg.teach.tasks, offset), "env", len(failures or [])


teach_task = task(**expensive_stage("teach", "models", "env", "agent", "teach", "verify", "hints", "runtime"))(teach)
