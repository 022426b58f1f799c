"""Load a team's environment by import path and hold it to the seam's contract.

A plugin is someone else's code running inside a pipeline that writes datasets and registers
models. So every call into it is bounded and checked: `reset` and `step` must answer within
`env.timeout_s` and return the seam's types; anything else raises `PluginError` naming the plugin,
the task and the field. Nothing is stored half-written because rollouts only hand complete
episodes to the stages that store them.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from r2w.contracts import Episode, Message
from r2w.environment import ChatEnvironment, ChatEnvironmentFactory, ChatStart, TaskSpec, TurnResult


class PluginError(RuntimeError):
    """A plugin broke the seam's contract (raised, returned the wrong type, or hung)."""


def import_object(path: str, field: str = "env.name") -> Any:
    """`package.module:attr` -> the object; errors name the field and what was expected."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"{field}: cannot import module {module_name!r} of {path!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"{field}: module {module_name!r} has no attribute {attr!r}") from None


def load_chat_environment(path: str, options: dict[str, Any], timeout_s: float) -> ChatEnvironmentFactory:
    """Build the plugin's factory with `env.options` and wrap it in the contract guard."""
    factory_type = import_object(path)
    try:
        factory = factory_type(**options)
    except Exception as exc:  # noqa: BLE001 - the plugin's own error, reported with its name
        raise PluginError(f"{path}: building the factory with env.options {sorted(options)} failed: {exc!r}") from None
    missing = [a for a in ("name", "category", "tasks", "make") if not hasattr(factory, a)]
    if missing:
        raise PluginError(
            f"{path}: the factory lacks {missing} (expected a ChatEnvironmentFactory, r2w/environment.py)"
        )
    return GuardedFactory(factory, path, timeout_s)


class GuardedFactory:
    """The plugin's factory with checked task lists and guarded environments."""

    kind = "chat"

    def __init__(self, inner: Any, plugin: str, timeout_s: float) -> None:
        self.inner, self.plugin, self.timeout_s = inner, plugin, timeout_s
        self.name, self.category = str(inner.name), str(inner.category)

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        tasks = self.inner.tasks(split, n, offset)
        if not isinstance(tasks, list) or not all(isinstance(t, TaskSpec) for t in tasks):
            raise PluginError(
                f"{self.plugin}: tasks({split!r}): expected a list of TaskSpec, got {type(tasks).__name__}"
            )
        return tasks

    def make(self) -> ChatEnvironment:
        return GuardedEnvironment(self.inner.make(), self.plugin, self.timeout_s)

    def restore(self, episode: Episode) -> TaskSpec | None:
        """The plugin's `restore` (optional seam, r2w/environment.py RestorableFactory); None without one."""
        restore = getattr(self.inner, "restore", None)
        if restore is None:
            return None
        try:
            task = restore(episode)
        except Exception as exc:  # noqa: BLE001 - the plugin's own error, reported with its name
            raise PluginError(f"{self.plugin}: restore(episode {episode.episode_id}) raised {exc!r}") from exc
        if task is not None and not isinstance(task, TaskSpec):
            raise PluginError(
                f"{self.plugin}: restore(episode {episode.episode_id}): expected a TaskSpec or None, "
                f"got {type(task).__name__}"
            )
        return task


class GuardedEnvironment:
    def __init__(self, inner: Any, plugin: str, timeout_s: float) -> None:
        self.inner, self.plugin, self.timeout_s = inner, plugin, timeout_s
        self.task_id = "?"
        self.hung = False  # a call ran past its timeout: the plugin's thread is still busy, never call it again
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r2w-plugin")

    def _call(self, what: str, fn, *args):
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self.hung = True
            raise PluginError(
                f"{self.plugin}: task {self.task_id}: {what} did not answer within env.timeout_s={self.timeout_s:g} s"
            ) from None
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin and task named
            raise PluginError(f"{self.plugin}: task {self.task_id}: {what} raised {exc!r}") from exc

    def reset(self, task: TaskSpec) -> ChatStart:
        self.task_id = task.task_id
        start = self._call("reset", self.inner.reset, task)
        if not isinstance(start, ChatStart):
            raise PluginError(
                f"{self.plugin}: task {self.task_id}: reset: expected ChatStart, got {type(start).__name__}"
            )
        _check_messages(self.plugin, self.task_id, "reset.messages", start.messages)
        if not isinstance(start.tools, list) or not all(isinstance(t, dict) for t in start.tools):
            raise PluginError(f"{self.plugin}: task {self.task_id}: reset.tools: expected a list of dicts")
        return start

    def step(self, turn: Message) -> TurnResult:
        result = self._call("step", self.inner.step, turn)
        if not isinstance(result, TurnResult):
            raise PluginError(
                f"{self.plugin}: task {self.task_id}: step: expected TurnResult, got {type(result).__name__}"
            )
        _check_messages(self.plugin, self.task_id, "step.messages", result.messages)
        for field in ("done", "success"):
            if not isinstance(getattr(result, field), bool):
                got = type(getattr(result, field)).__name__
                raise PluginError(f"{self.plugin}: task {self.task_id}: step.{field}: expected bool, got {got}")
        if not isinstance(result.score, int | float):
            raise PluginError(f"{self.plugin}: task {self.task_id}: step.score: expected a number")
        return result

    def close(self) -> None:
        try:
            if not self.hung:  # closing a hung plugin would hang too, and hide the error that ended the run
                self._call("close", self.inner.close)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _check_messages(plugin: str, task_id: str, field: str, messages: Any) -> None:
    if not isinstance(messages, list) or not all(isinstance(m, Message) for m in messages):
        raise PluginError(f"{plugin}: task {task_id}: {field}: expected a list of r2w.contracts.Message")
