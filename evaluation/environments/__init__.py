"""Benchmark adapters behind one interface; `make_environment` picks one from config."""

from __future__ import annotations

from evaluation.environments.reasoning_gym import ReasoningGymFactory
from evaluation.environments.twx import TWXFactory
from r2w.config import EnvConfig
from r2w.environment import Environment, EnvironmentFactory, Observation, TaskSpec

__all__ = ["Environment", "EnvironmentFactory", "Observation", "TaskSpec", "make_environment"]


def make_environment(cfg: EnvConfig) -> EnvironmentFactory:
    if cfg.name == "twx":
        return TWXFactory(cfg.game, cfg.params, cfg.max_steps)
    if cfg.name == "reasoning_gym":
        return ReasoningGymFactory(cfg.families, cfg.family_kwargs, cfg.success_threshold)
    raise ValueError(f"env.name: unknown environment {cfg.name!r} (expected 'twx' or 'reasoning_gym')")
