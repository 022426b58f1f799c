"""Sharded rollouts without a cluster: what a Dask worker does to one batch (r2w/scaleout.play_batch), done here
batch by batch, gives the episodes `play` gives in one go, sampled ones included, and prefetched hints are the
ones live retrieval would give. tests/ops/test_dask.py runs the same on real Dask workers."""

from __future__ import annotations

import pytest

from evaluation.environments import make_environment
from r2w.backends import make_backend
from r2w.config import load_config
from r2w.contracts import Hint, content_hash, record_content
from r2w.datasets import load_records, save_records
from r2w.rollout import agent_policy, jobs_of, play, prefetch_hints
from r2w.scaleout import AgentRecipe, play_agent, play_batch, worker_identity


def _hash(episodes) -> str:
    return content_hash([record_content(e) for e in episodes])


def test_batches_played_apart_equal_one_process_play(tiny_model, tmp_path):
    cfg = load_config("test", {"data_dir": str(tmp_path), "agent.batch_size": 3, "env.max_steps": 3})
    backend = make_backend("transformers", tiny_model, dtype="float32", seed=cfg.runtime.seed)
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", 4)

    def retrieve(category: str, query: str, k: int) -> list[Hint]:  # a store: one hint per task text
        text = f"WHEN {query[:20]}: look around first"
        return [Hint(hint_id=f"h-{content_hash(query)[:8]}", text=text, applicability="", category=category)][:k]

    # sampled (temperature 1), 2 samples per task, with hints: 8 jobs in batches of 3 (3 + 3 + 2)
    whole = play(cfg, factory, tasks, agent_policy(cfg, backend, "teacher", 1.0), "whole", samples=2, retrieve=retrieve)
    hints = prefetch_hints(factory, tasks, retrieve, cfg.hints.k)
    jobs = jobs_of(tasks, samples=2)
    agent = AgentRecipe(backend.recipe, "teacher", 1.0)
    apart = []
    for i in reversed(range(0, len(jobs), 3)):  # last batch first, as a worker might: order must not matter
        apart = play_batch(cfg, make_environment, jobs[i : i + 3], agent, hints, "batch").episodes + apart
    assert [e.episode_id for e in apart] == [e.episode_id for e in whole]
    assert _hash(apart) == _hash(whole) and any(e.hint_ids for e in whole)
    assert len({e.episode_id for e in whole}) == len(whole)  # the two samples of a task are two draws
    # the stored datasets: one version for both (volatile timing fields stay out of the content hash)
    a = save_records(whole, tmp_path / "a", "episodes")
    b = save_records(apart, tmp_path / "b", "episodes")
    assert a.hash == b.hash and load_records(b, type(whole[0]))[0].wall_time_s == apart[0].wall_time_s
    assert worker_identity().startswith("in-process pid")


def test_in_process_by_default_and_a_backend_without_recipe_cannot_travel(tiny_model, tiny_backend, tmp_path):
    overrides = {"data_dir": str(tmp_path), "env.max_steps": 2}
    cfg = load_config("test", overrides)
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", 2)
    played = play_agent(cfg, factory, make_environment, tasks, tiny_backend, "base", 0.0, "base")
    assert played.workers == ["in-process"] and len(played.episodes) == 2
    remote = load_config("test", {**overrides, "runtime.dask_address": "tcp://127.0.0.1:1"})
    assert remote.hash == cfg.hash  # where rollouts run is not part of what the config makes happen
    with pytest.raises(ValueError, match="cannot rebuild it"):
        play_agent(remote, factory, make_environment, tasks, tiny_backend, "base", 0.0, "base")
