"""The environment seam: the small interface every environment adapter implements (a contract: r2w/ owns it).

reset -> task text + first observation + valid actions; step -> observation, done, success.
Splits (train/dev/test) are the benchmark's own seed folds, so held-out means held-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from r2w.contracts import Episode, Message


@dataclass(frozen=True)
class TaskSpec:
    """Which game instance to play: the benchmark's split and seed identify it exactly."""

    env: str
    category: str
    split: str
    seed: int
    name: str = ""  # the environment's own task id, when it has one (e.g. BFCL's "simple_python_12")

    @property
    def task_id(self) -> str:
        return f"{self.env}/{self.category}/{self.split}/{self.name or self.seed}"


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


# ---------------------------------------------------------------------------------------------- chat seam
# Tool-calling chat agents: the environment speaks in chat messages (OpenAI function-calling shape).
# A team implements `ChatEnvironmentFactory` in its own package and names it in the config
# (`env.name: mypkg.envs:Desk`, with `env.options` passed to it as keyword arguments).


@dataclass
class ChatStart:
    """The first messages of a task (a system message is optional; r2w adds its own system prompt
    and the hints block) and the tools the agent may call, as OpenAI function schemas:
    `{"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}`."""

    messages: list[Message]
    tools: list[dict] = field(default_factory=list)


@dataclass
class TurnResult:
    """What the environment answers to one assistant turn: `tool` messages for its calls (with
    `tool_call_id`) and/or a user message; done/success/score come from the environment's verifier."""

    messages: list[Message] = field(default_factory=list)
    done: bool = False
    success: bool = False
    score: float = 0.0
    verdict_by: str = ""  # who decided success, when not the environment itself (e.g. "gold:expected_answer")


class ChatEnvironment(Protocol):
    """One live episode of a tool-calling task (stateful: tools may change its state)."""

    def reset(self, task: TaskSpec) -> ChatStart: ...

    def step(self, turn: Message) -> TurnResult: ...

    def close(self) -> None: ...


@runtime_checkable
class ChatEnvironmentFactory(Protocol):
    """Lists task ids per split and makes live environments. Splits must never share a task."""

    name: str
    category: str
    kind: Literal["chat"]

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]: ...

    def make(self) -> ChatEnvironment: ...


@runtime_checkable
class RestorableFactory(Protocol):
    """Optional: a factory that can reset to the task an imported episode recorded.

    Why: imported failures (`r2w collect import`) come from a team's agent in production; when the
    team's environment can rebuild the very task (a ticket id, a seed), the teacher re-attempts that
    task instead of the environment's own train tasks. Return None for an episode this environment
    cannot restore (another environment's, an unknown id). Keep the task's own split: only restored
    `train` tasks are taught, so a trace of a held-out task never reaches the training set.
    """

    def restore(self, episode: Episode) -> TaskSpec | None: ...
