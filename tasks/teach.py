"""Stage 3 - teach: re-run training tasks with retrieved hints in the prompt; keep verified successes.

Hints are retrieved ONCE per episode, at its start (task + first observation as the query),
and placed in a delimited block of the system prompt; each kept trajectory records which
hints it saw.
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
from r2w.contracts import TEACHER, Trajectory, content_hash
from r2w.datasets import DatasetRef, save_records
from r2w.rollout import HintRetriever
from r2w.scaleout import play_agent


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
    workers: list[str] = []  # who played the attempts: in-process, or Dask workers (runtime.dask_address)

    def metrics(self) -> dict[str, float]:
        return {
            "teach.attempts": self.attempts,
            "teach.kept": self.kept,
            "teach.single_sample_rate": self.single_sample_rate,
        }


def teach(
    cfg: R2WConfig, backend: GenerationBackend, retrieve: HintRetriever, hint_snapshot: str, offset: int = 0
) -> TeachResult:
    """Best-of-n hinted attempts on `teach.tasks` train tasks from `offset` (the round's first task)."""
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", cfg.teach.tasks, offset)
    desc = f"teach (best-of-{cfg.teach.samples}, hints k={cfg.hints.k})"
    played = play_agent(cfg, factory, make_environment, tasks, backend, TEACHER, cfg.teach.temperature, desc,
                        samples=cfg.teach.samples, retrieve=retrieve)  # fmt: skip
    episodes = played.episodes
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
        workers=played.workers,
    )


teach_task = task(**expensive_stage("teach", "models", "env", "agent", "teach", "hints", "runtime"))(teach)
