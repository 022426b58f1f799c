"""The environment seam: the small interface every environment adapter implements (a contract: r2w/ owns it).

reset -> task text + first observation + valid actions; step -> observation, done, success.
Splits (train/dev/test) are the benchmark's own seed folds, so held-out means held-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class TaskSpec:
    """Which game instance to play: the benchmark's split and seed identify it exactly."""

    env: str
    category: str
    split: str
    seed: int

    @property
    def task_id(self) -> str:
        return f"{self.env}/{self.category}/{self.split}/{self.seed}"


@dataclass
class Observation:
    text: str
    valid_actions: list[str]
    done: bool = False
    success: bool = False
    score: float = 0.0
    reward: float = 0.0
    info: dict = field(default_factory=dict)


class Environment(Protocol):
    """One live game instance (stateful); a rollout keeps one per concurrent episode."""

    def reset(self, task: TaskSpec) -> tuple[str, Observation]: ...

    def step(self, action: str) -> Observation: ...

    def gold_actions(self) -> list[str]: ...

    def close(self) -> None: ...


class EnvironmentFactory(Protocol):
    name: str
    category: str

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]: ...

    def make(self) -> Environment: ...
