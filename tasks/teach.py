"""Stage 3 - teach: re-run training tasks with retrieved hints in the prompt; keep verified successes.

Hints are retrieved ONCE per episode, at its start (task + first observation as the query),
and placed in a delimited block of the system prompt; each kept trajectory records which
hints it saw.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from evaluation.environments import Observation, TaskSpec, make_environment
from evaluation.metrics import score_episodes
from prompts.agent import extract_hints_block, render_hints_block
from r2w.backends import GenerationBackend
from r2w.caching import expensive_stage
from r2w.config import R2WConfig
from r2w.contracts import Hint, Trajectory, content_hash
from r2w.datasets import DatasetRef, save_records
from r2w.rollout import HintProvider, run_episodes
from tasks.collect import agent_policy


class TeachResult(BaseModel):
    trajectories: DatasetRef
    episodes: DatasetRef
    attempts: int
    kept: int
    tasks_covered: int
    tasks: int
    single_sample_rate: float  # success of sample 0 only: the teacher's one-shot rate
    hint_snapshot: str


def hint_provider(retrieve, k: int) -> HintProvider:
    """One-shot retrieval at episode start, keyed by category and the task + first observation."""

    def provide(task: TaskSpec, task_text: str, obs: Observation) -> tuple[list[str], str]:
        hints: list[Hint] = retrieve(task.category, f"{task_text}\n{obs.text}", k) if k else []
        return [h.hint_id for h in hints], render_hints_block(hints)

    return provide


def teach(cfg: R2WConfig, backend: GenerationBackend, retrieve, hint_snapshot: str) -> TeachResult:
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", cfg.teach.tasks)
    jobs = [(t, i) for t in tasks for i in range(cfg.teach.samples)]
    policy = agent_policy(cfg, backend, "teacher", cfg.teach.temperature)
    episodes = run_episodes(
        factory,
        jobs,
        policy,
        cfg.env.max_steps,
        cfg.agent.batch_size,
        config_hash=cfg.hash,
        desc=f"teach (best-of-{cfg.teach.samples}, hints k={cfg.hints.k})",
        hints_for=hint_provider(retrieve, cfg.hints.k),
        avoid_losing_actions=cfg.agent.avoid_losing_actions,
    )
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
    )


teach_task = task(**expensive_stage("teach", "models", "env", "agent", "teach", "hints", "runtime"))(teach)
