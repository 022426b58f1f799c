"""Replay imported failures in a tool sandbox (`env.name: trace_replay`).

An imported failure (`r2w collect import`) is a conversation of a team's agent in production. When no
environment can rebuild its task (r2w/environment.py `RestorableFactory`), this one replays it:

- reset: the recorded first messages (system/user before the first assistant turn) and the recorded tools;
- step: each tool call is answered with the recorded result of the same tool called with the same
  arguments (JSON canonicalised: key order and spacing do not matter); a call the trace never made gets a
  tool error saying so (the sandbox cannot run the real tool);
- a turn without tool calls is the final answer and ends the episode. The sandbox has no verifier of its
  own: `judge` decides, today from the record's gold data (`Episode.gold`: MLflow expectations, or the
  `expected` of an --outcomes file). A record without gold cannot be judged, so building the factory fails
  with a config error naming it, rather than counting every attempt as a failure (or a success).

Splits: an imported task is `test` when a hash of its episode id falls under `test_fraction`, else
`train`: stable as more failures are imported, so a task the teacher saw never becomes a held-out one.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass

from r2w.config import ConfigError
from r2w.contracts import Episode, Message, ToolCall, content_hash
from r2w.environment import ChatStart, TaskSpec, TurnResult

NAME = "trace_replay"
GOLD_KEYS = ("expected_answer", "expected_tool_calls")


@dataclass(frozen=True)
class Verdict:
    success: bool
    score: float
    verdict_by: str


def judge(record: Episode, turns: list[Message]) -> Verdict:
    """Whether a replayed attempt (the agent's assistant turns) solved the imported task.

    The environment's own verdict, from the record's gold data: `expected_answer` must equal the final
    answer (case, spacing and a trailing full stop aside); every call of `expected_tool_calls` must have
    been made. A record without gold is `unverified` here: a run that allows those has a verifier of its
    own (`verify.kind` callable or judge, r2w/verifiers.py), applied by the teach stage over these verdicts.
    """
    if not any(k in record.gold for k in GOLD_KEYS):
        return Verdict(False, 0.0, "unverified")
    final = turns[-1].content if turns and not turns[-1].tool_calls else ""
    ok = True
    if "expected_answer" in record.gold:
        ok = ok and _norm(final) == _norm(str(record.gold["expected_answer"]))
    if "expected_tool_calls" in record.gold:
        made = [call_key(c.function.name, c.function.arguments) for t in turns for c in t.tool_calls]
        for expected in record.gold["expected_tool_calls"]:
            key = call_key(expected["name"], expected.get("arguments", {}))
            ok = ok and key in made
            if key in made:
                made.remove(key)  # each expected call needs its own call
    return Verdict(ok, float(ok), "gold:" + "+".join(k for k in GOLD_KEYS if k in record.gold))


def require_judgeable(episodes: list[Episode]) -> None:
    """A config error naming the imported failures `judge` cannot decide (no usable gold data)."""
    missing = [e for e in episodes if not any(k in e.gold for k in GOLD_KEYS)]
    if missing:
        named = ", ".join(f"{e.episode_id} ({e.task_id})" for e in missing[:3])
        raise ConfigError(
            f"env.name=trace_replay: {len(missing)} of {len(episodes)} imported failures have no gold data to "
            f"verify a replay against ({named}{', ...' if len(missing) > 3 else ''}); expected Episode.gold with "
            f"{' or '.join(GOLD_KEYS)} (MLflow expectations, or `expected` per id in the --outcomes file of "
            "`r2w collect import`), or a configured verifier"
        )


def call_key(name: str, arguments: str | dict) -> str:
    """A tool call's identity for matching: its name and its arguments as canonical JSON."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return f"{name}\n{arguments.strip()}"  # not JSON: matched as written
    return f"{name}\n{json.dumps(arguments, sort_keys=True, separators=(',', ':'), ensure_ascii=False)}"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


class TraceReplayFactory:
    """Imported failures as tasks of a chat environment (seam: r2w/environment.py)."""

    kind = "chat"
    name = NAME

    def __init__(self, episodes: list[Episode], test_fraction: float = 0.25, require_gold: bool = True) -> None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"env.options.test_fraction: {test_fraction} must be between 0 and 1")
        usable = [e for e in episodes if not e.success and e.steps]
        if not usable:
            raise ConfigError("env.name=trace_replay: no imported failure with recorded steps to replay")
        if require_gold:  # else the run's configured verifier decides (verify.kind callable | judge)
            require_judgeable(usable)
        self.test_fraction = test_fraction
        self.records = {e.episode_id: e for e in usable}
        self.category = "+".join(sorted({e.category for e in usable}))

    def restore(self, episode: Episode) -> TaskSpec | None:
        """The replay task of an imported failure (None if it is not one of this factory's)."""
        if episode.episode_id not in self.records:
            return None
        digest = int(content_hash(episode.episode_id)[:8], 16)
        split = "test" if digest / 16**8 < self.test_fraction else "train"
        return TaskSpec(NAME, episode.category, split, digest, name=episode.episode_id)

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        if split not in ("train", "test"):
            raise ValueError(f"trace_replay: split {split!r}: expected 'train' or 'test' (imported tasks have no dev)")
        tasks = sorted((t for e in self.records.values() if (t := self.restore(e)).split == split), key=_order)
        if not tasks:
            raise ConfigError(
                f"env.name=trace_replay: none of the {len(self.records)} imported failures falls in the {split} split "
                f"(env.options.test_fraction={self.test_fraction:g}); import more failures"
            )
        return tasks[offset : offset + n]

    def make(self) -> TraceReplayEpisode:
        return TraceReplayEpisode(self.records)


def _order(task: TaskSpec) -> tuple[int, str]:
    return task.seed, task.name


class TraceReplayEpisode:
    """One replay: the recorded start, then tool calls answered from the recorded results."""

    def __init__(self, records: dict[str, Episode]) -> None:
        self.records = records
        self.record: Episode | None = None
        self.results: dict[str, list[str]] = {}
        self.turns: list[Message] = []

    def reset(self, task: TaskSpec) -> ChatStart:
        record = self.records.get(task.name)
        if record is None:
            raise ValueError(f"trace_replay: no imported failure {task.name!r}")
        self.record, self.turns, self.results = record, [], recorded_results(record)
        first = [m for m in record.steps[0].prompt if m.role in ("system", "user")]
        return ChatStart(messages=first, tools=list(record.tools))

    def step(self, turn: Message) -> TurnResult:
        assert self.record is not None, "step before reset"
        self.turns.append(turn)
        if not turn.tool_calls:
            verdict = judge(self.record, self.turns)
            return TurnResult(done=True, success=verdict.success, score=verdict.score, verdict_by=verdict.verdict_by)
        return TurnResult(messages=[self.answer(c) for c in turn.tool_calls])

    def answer(self, call: ToolCall) -> Message:
        queue = self.results.get(call_key(call.function.name, call.function.arguments))
        if queue:
            content = queue.pop(0) if len(queue) > 1 else queue[0]  # repeated calls: the next recorded result
        else:
            recorded = sorted({k.split("\n", 1)[1] for k in self.results if k.split("\n", 1)[0] == call.function.name})
            content = json.dumps(
                {
                    "error": f"replay sandbox: the imported trace has no result for {call.function.name} with these "
                    f"arguments; recorded calls of {call.function.name}: {recorded or 'none'}"
                }
            )
        return Message(role="tool", tool_call_id=call.id, name=call.function.name, content=content)

    def close(self) -> None:
        self.record, self.turns = None, []


def recorded_results(record: Episode) -> dict[str, list[str]]:
    """(tool name, canonical arguments) -> the results the trace recorded for that call, in order."""
    out: dict[str, list[str]] = defaultdict(list)
    for step in record.steps:
        by_id = {m.tool_call_id: m for m in step.tool_results if m.role == "tool" and m.tool_call_id}
        unnamed = [m for m in step.tool_results if m.role == "tool" and not m.tool_call_id]
        for i, call in enumerate(step.tool_calls):
            result = by_id.get(call.id) or (unnamed[i] if i < len(unnamed) else None)
            if result is not None:
                out[call_key(call.function.name, call.function.arguments)].append(result.content)
    return dict(out)
