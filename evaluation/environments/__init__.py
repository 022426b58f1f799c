"""Benchmark adapters behind one interface; `make_environment` picks one from config."""

from __future__ import annotations

from evaluation.environments.bfcl import BFCLFactory
from evaluation.environments.reasoning_gym import ReasoningGymFactory
from evaluation.environments.trace_replay import TraceReplayFactory
from evaluation.environments.twx import TWXFactory, shutdown_idle
from r2w.config import ConfigError, EnvConfig
from r2w.contracts import Episode
from r2w.environment import ChatEnvironmentFactory, Environment, EnvironmentFactory, Observation, TaskSpec
from r2w.plugins import load_chat_environment

__all__ = ["Environment", "EnvironmentFactory", "Observation", "TaskSpec", "make_environment", "release_idle"]


def release_idle() -> None:
    """Stop the started environments kept idle for the next rollout (TWX's JVMs, ~65 MB and a little CPU
    each): before a long phase without rollouts, such as training."""
    shutdown_idle()


def make_environment(
    cfg: EnvConfig, imported: list[Episode] | None = None, require_gold: bool = True
) -> EnvironmentFactory | ChatEnvironmentFactory:
    """The configured environment: a built-in one, or a team's factory named by import path (guarded).

    `imported`: the run's imported failures, the tasks of `trace_replay` (the retrain flow passes them);
    `require_gold=False` when the run has a verifier of its own (`verify.kind` callable | judge)."""
    if ":" in cfg.name:
        return load_chat_environment(cfg.name, cfg.options, cfg.timeout_s)
    if cfg.name == "twx":
        return TWXFactory(cfg.game, cfg.params, cfg.max_steps)
    if cfg.name == "reasoning_gym":
        return ReasoningGymFactory(cfg.families, cfg.family_kwargs, cfg.success_threshold)
    if cfg.name == "bfcl":  # a chat environment; options: {category, test_fraction}
        unknown = sorted(set(cfg.options) - {"category", "test_fraction"})
        if unknown:
            raise ValueError(f"env.options: unknown bfcl options {unknown} (expected 'category', 'test_fraction')")
        return BFCLFactory(**cfg.options)
    if cfg.name == "trace_replay":  # options: {test_fraction}
        unknown = sorted(set(cfg.options) - {"test_fraction"})
        if unknown:
            raise ConfigError(f"env.options: unknown trace_replay options {unknown} (expected 'test_fraction')")
        if imported is None:
            raise ConfigError("env.name=trace_replay: replays a run's imported failures (collect.source imports)")
        return TraceReplayFactory(imported, **cfg.options, require_gold=require_gold)
    raise ValueError(
        f"env.name: unknown environment {cfg.name!r} (expected 'twx', 'reasoning_gym', 'bfcl', 'trace_replay' "
        "or 'pkg.mod:Factory')"
    )
