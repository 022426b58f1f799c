"""Replay set (part of distill): the base agent's own answers to tasks it is not being taught, as SFT rows.

Fine-tuning on one game shifts the model everywhere its prompt format reaches: both tidy6 and arithmetic
students lost 0.2-0.27 nats/token of gold-answer log-likelihood on reasoning-gym leg_counting, a family
they never saw. Mixing in (prompt, base reply) rows from other families asks the student to keep
answering those prompts as the base did (self-distillation replay: no new knowledge, no gold labels).
Rows are stored as a content-hashed dataset and enter the training set's hash, so lineage shows them.
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from evaluation.environments import make_environment
from r2w.backends import GenerationBackend
from r2w.caching import expensive_stage
from r2w.config import EnvConfig, R2WConfig, ReplaySettings
from r2w.contracts import DistillExample
from r2w.datasets import DatasetRef, save_records
from r2w.distill_data import example_hash
from r2w.rollout import agent_policy, run_episodes


class ReplayResult(BaseModel):
    examples: DatasetRef
    kept: int
    empty: int  # base replies with no text: nothing to keep
    tokens: int = 0  # prompt + completion tokens of the base's replayed answers


def build_replay_set(cfg: R2WConfig, backend: GenerationBackend, replay: ReplaySettings) -> ReplayResult:
    """Base answers (greedy by default) to `replay.examples` train tasks of `replay.families`, in the agent's
    prompt format; empty answers are skipped and counted."""
    env = EnvConfig(name="reasoning_gym", families=replay.families, max_steps=1)
    factory = make_environment(env)
    tasks = factory.tasks("train", replay.examples)
    policy = agent_policy(cfg, backend, "replay", temperature=replay.temperature)
    episodes = run_episodes(factory, [(t, 0) for t in tasks], policy, 1, cfg.agent.batch_size, cfg.hash, "replay")
    rows, empty = [], 0
    for episode in episodes:
        step = episode.steps[0]
        if not step.action.strip():
            empty += 1
            continue
        rows.append(
            DistillExample(
                example_id=example_hash(step.prompt, step.action),
                task_id=f"replay:{episode.task_id}",
                category="replay",
                prompt=step.prompt,
                completion=step.action,
                trajectory_id=episode.episode_id,
                split="train",
            )
        )
    meta = {"families": replay.families, "model": policy.model_id, "empty": empty}
    ref = save_records(rows, cfg.data_path / "datasets", "replay-examples", meta)
    tokens = sum(e.total_tokens for e in episodes)
    return ReplayResult(examples=ref, kept=len(rows), empty=empty, tokens=tokens)


replay_task = task(**expensive_stage("replay-set", "models", "agent", "runtime"))(build_replay_set)
