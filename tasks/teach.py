"""Stage 3 - teach: re-run training tasks with retrieved hints in the prompt; keep verified successes.

"Verified" is the configured verifier's word (`verify:`, r2w/verifiers.py): the environment's own
verdict, a team's callable, or an LLM judge ranking each task's attempts against each other.

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
from r2w.contracts import Trajectory, content_hash
from r2w.datasets import DatasetRef, save_records
from r2w.rollout import HintRetriever, agent_policy, play
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

    def metrics(self) -> dict[str, float]:
        return {
            "teach.attempts": self.attempts,
            "teach.kept": self.kept,
            "teach.single_sample_rate": self.single_sample_rate,
            "teach.verify_malformed": self.verify_malformed,
        }


def teach(
    cfg: R2WConfig,
    backend: GenerationBackend,
    retrieve: HintRetriever,
    hint_snapshot: str,
    offset: int = 0,
    judge: GenerationBackend | None = None,
) -> TeachResult:
    """Best-of-n hinted attempts on `teach.tasks` train tasks from `offset` (the round's first task), kept
    where the configured verifier accepts them; `judge` is the local judge model (default: `backend`)."""
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", cfg.teach.tasks, offset)
    policy = agent_policy(cfg, backend, "teacher", cfg.teach.temperature)
    desc = f"teach (best-of-{cfg.teach.samples}, hints k={cfg.hints.k})"
    episodes = play(cfg, factory, tasks, policy, desc, samples=cfg.teach.samples, retrieve=retrieve)
    verifier = make_verifier(cfg.verify, judge or backend)
    try:
        episodes, _ = verify_episodes(verifier, episodes)
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
    )


teach_task = task(**expensive_stage("teach", "models", "env", "agent", "teach", "verify", "hints", "runtime"))(teach)
