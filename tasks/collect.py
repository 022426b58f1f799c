"""Stage 1 - collect: roll the base agent out on training games and keep its failures.

All episodes are stored (the failed ones also become DPO 'rejected' attempts later);
failures are stored as their own versioned dataset, the input of hint extraction.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from evaluation.environments import make_environment
from r2w.backends import GenerationBackend, SamplingParams
from r2w.caching import stage_cache
from r2w.config import R2WConfig
from r2w.datasets import DatasetRef, save_records
from r2w.rollout import LLMPolicy, run_episodes


class CollectResult(BaseModel):
    episodes: DatasetRef
    failures: DatasetRef
    n_episodes: int
    n_failures: int


def agent_policy(cfg: R2WConfig, backend: GenerationBackend, name: str, temperature: float, n: int = 1) -> LLMPolicy:
    """The agent as every stage runs it: same prompt, same action mapping, only sampling differs."""
    params = SamplingParams(
        n=n,
        temperature=temperature,
        top_p=cfg.teach.top_p if temperature > 0 else 1.0,
        max_tokens=cfg.agent.max_new_tokens,
        seed=cfg.runtime.seed,
    )
    return LLMPolicy(
        backend,
        name,
        params,
        history=cfg.agent.history,
        constrained=cfg.agent.constrained,
        answer_max_tokens=cfg.agent.answer_max_new_tokens,
    )


def collect_failures(cfg: R2WConfig, backend: GenerationBackend, policy_name: str = "base") -> CollectResult:
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", cfg.collect.episodes)
    policy = agent_policy(cfg, backend, policy_name, cfg.collect.temperature)
    episodes = run_episodes(
        factory,
        [(t, 0) for t in tasks],
        policy,
        cfg.env.max_steps,
        cfg.agent.batch_size,
        config_hash=cfg.hash,
        desc="collect (base agent)",
    )
    failures = [e for e in episodes if not e.success]
    root = Path(cfg.data_path) / "datasets"
    meta = {"env": cfg.env.model_dump(), "policy": policy_name, "config_hash": cfg.hash}
    return CollectResult(
        episodes=save_records(episodes, root, "episodes", meta),
        failures=save_records(failures, root, "failures", meta),
        n_episodes=len(episodes),
        n_failures=len(failures),
    )


collect_task = task(
    name="collect-failures",
    cache_policy=stage_cache("models", "env", "agent", "collect", "runtime"),
    persist_result=True,
    retries=2,
    retry_delay_seconds=[5, 30],
)(collect_failures)
