"""Benchmark adapters behind one interface; `make_environment` picks one from config."""

from __future__ import annotations

from evaluation.environments.bfcl import BFCLFactory
from evaluation.environments.reasoning_gym import ReasoningGymFactory
from evaluation.environments.twx import TWXFactory
from r2w.config import EnvConfig
from r2w.environment import Environment, EnvironmentFactory, Observation, TaskSpec

__all__ = ["Environment", "EnvironmentFactory", "Observation", "TaskSpec", "make_environment"]


def make_environment(cfg: EnvConfig) -> EnvironmentFactory | BFCLFactory:
    if cfg.name == "twx":
        return TWXFactory(cfg.game, cfg.params, cfg.max_steps)
    if cfg.name == "reasoning_gym":
        return ReasoningGymFactory(cfg.families, cfg.family_kwargs, cfg.success_threshold)
    if cfg.name == "bfcl":  # a chat environment; options: {category, test_fraction}
        options = dict(getattr(cfg, "options", {}) or {})
        unknown = sorted(set(options) - {"category", "test_fraction"})
        if unknown:
            raise ValueError(f"env.options: unknown bfcl options {unknown} (expected 'category', 'test_fraction')")
        return BFCLFactory(**options)
    raise ValueError(f"env.name: unknown environment {cfg.name!r} (expected 'twx', 'reasoning_gym' or 'bfcl')")
