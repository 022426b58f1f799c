"""Typed records that every stage reads and writes.

Stages talk only through these contracts and the stores (datasets on disk, Chroma, MLflow);
keeping them in one module makes the data flow auditable in one place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def content_hash(payload: object) -> str:
    """sha256 of a canonical JSON dump: the identity of data, independent of where it lives."""
    blob = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


# Policy names in evaluation episodes, scores and gate reports. `base+hints` is the BASE model with
# retrieved hints in its prompt; `teacher` is the model that generated training data (teach stage),
# which may be another model behind a URL. They were both called "teacher" once, and that misled.
RANDOM, BASE, BASE_HINTS, STUDENT, TEACHER = "random", "base", "base+hints", "student", "teacher"
BASE_SAMPLED = "base-sampled"  # the base model, hint-free, one sample at the teacher's temperature


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Fields that say when or how fast a record was made, not what it is. Dataset content hashes leave them out
    # (`record_content`), so the same rollouts played twice, or sharded over Dask workers, hash the same.
    VOLATILE_FIELDS: ClassVar[frozenset[str]] = frozenset()


def record_content(record: BaseModel) -> dict:
    """The record as JSON without the volatile fields of it or of any record nested in it."""
    return _without_volatile(record, record.model_dump(mode="json"))


def _without_volatile(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        volatile = getattr(type(value), "VOLATILE_FIELDS", frozenset())
        return {k: _without_volatile(getattr(value, k, None), v) for k, v in dumped.items() if k not in volatile}
    if isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_without_volatile(x, d) for x, d in zip(value, dumped, strict=True)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {k: _without_volatile(value.get(k), v) for k, v in dumped.items()}
    return dumped


class ToolFunction(Record):
    name: str = Field(min_length=1)
    arguments: str = "{}"  # JSON text, as OpenAI's API sends it (an importer turns an object into text)


class ToolCall(Record):
    """One function call of an assistant turn, in OpenAI's function-calling shape."""

    id: str
    type: Literal["function"] = "function"
    function: ToolFunction


class Message(Record):
    """A chat message. Text games use system/user/assistant with text; tool-calling agents add
    `tool_calls` on assistant turns and `tool` messages answering them by `tool_call_id`."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None  # the tool's name on a `tool` message

    @model_serializer(mode="wrap")
    def _lean(self, handler):
        """Leave out empty tool fields, so text messages serialise (and hash) exactly as before tools existed."""
        data = handler(self)
        for key in ("tool_calls", "tool_call_id", "name"):
            if not data.get(key):
                data.pop(key, None)
        return data


class Step(Record):
    """One agent decision: what it saw, what it said, what the environment did with it.

    A text-game step picks `action` among `valid_actions`. A chat step is one assistant turn:
    `response` is its text, `tool_calls` its calls (`action` their canonical text), and
    `tool_results` the `tool` messages (or user reply) the environment answered with.
    """

    index: int
    observation: str
    valid_actions: list[str] = Field(default_factory=list)
    prompt: list[Message]
    response: str
    action: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reward: float = 0.0
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_results: list[Message] = Field(default_factory=list)
    malformed_tool_call: str = ""  # why the reply could not be parsed as tool calls ('' = fine)


EPISODE_SCHEMA_VERSION = 2  # 1: text-game steps only (no tools); 2: chat turns with tool calls


class Episode(Record):
    """One attempt at one task, with its verifiable outcome.

    `schema_version` 1 records (written before tools existed) read as version 2: every tool field
    defaults to empty, so old datasets stay readable (`migrate_episode`).
    """

    schema_version: int = EPISODE_SCHEMA_VERSION
    episode_id: str
    env: str
    category: str
    task_id: str
    split: str
    seed: int
    task: str
    steps: list[Step] = Field(default_factory=list)
    success: bool = False
    score: float = 0.0
    outcome: str = ""
    policy: str = ""  # role that produced it: base | teacher | student | random | an importer's label
    model: str = ""  # which weights: backend identity (model path, adapter, dtype, seed); '' when unknown
    hint_ids: list[str] = Field(default_factory=list)
    sample_index: int = 0
    config_hash: str = ""
    wall_time_s: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    VOLATILE_FIELDS: ClassVar[frozenset[str]] = frozenset({"wall_time_s", "created_at"})
    source: str = "rollout"  # rollout | trace-file | mlflow-trace | an importer: openai, otel, langsmith, langfuse
    tools: list[dict] = Field(default_factory=list)  # the tool (function) schemas the agent ran with
    # How its prompts showed the tools (r2w/tool_calls.py): '' = r2w's text fallback (tools in the system message;
    # every episode from before native tools), 'template:hermes' = the model's own chat template. Left out when ''.
    tool_format: str = ""
    verdict_by: str = ""  # who decided success: env verifier | a team's verifier | judge:<model>
    # Reference data an importer found next to the episode (MLflow expectations, a dataset's expected
    # output): kept, never shown to the agent. Empty for rollouts, and then left out of the record.
    gold: dict = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def migrate_episode(cls, data):
        """Read older schema versions: v1 has no tool fields and no version number."""
        if isinstance(data, dict) and "schema_version" not in data:
            data = {**data, "schema_version": EPISODE_SCHEMA_VERSION}
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > EPISODE_SCHEMA_VERSION:  # other types: pydantic names the field
            raise ValueError(f"schema_version {version} is newer than this r2w reads ({EPISODE_SCHEMA_VERSION})")
        return data

    @model_serializer(mode="wrap")
    def _lean(self, handler):
        """Leave out an empty `gold` and `tool_format`, so episodes without them serialise (and hash) as before."""
        data = handler(self)
        for key in ("gold", "tool_format"):
            if not data.get(key):
                data.pop(key, None)
        return data

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Provenance(Record):
    episode_ids: list[str] = Field(default_factory=list)
    run_ids: list[str] = Field(default_factory=list)
    first_seen: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)


class Hint(Record):
    """A short, general, imperative lesson with the condition under which it applies."""

    hint_id: str
    text: str
    applicability: str
    category: str
    status: Literal["active", "disabled"] = "active"
    support: int = 1
    source: Literal["extracted", "curated"] = "extracted"
    extractor: str = ""  # model + prompt version that wrote it
    provenance: Provenance = Field(default_factory=Provenance)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @staticmethod
    def make_id(text: str, category: str) -> str:
        return "h-" + content_hash({"text": text.strip().lower(), "category": category})[:16]


class SuccessReference(Record):
    """A verified success to contrast a failure with (hint extraction): what the success did, step by step.

    `source`: teacher (a best-of-n teach episode of an earlier round), base (a collected rollout of the
    base agent that succeeded) or gold (the environment's own solution, replayed and verified).
    `same_task` is False when the success is of a similar task (same category), not the failed one.
    `replies[i]` is what the environment answered to `actions[i]`.
    """

    source: Literal["teacher", "base", "gold"]
    task_id: str
    same_task: bool
    actions: list[str]
    replies: list[str] = Field(default_factory=list)
    start: str = ""  # the first observation (or the task's first message)
    episode_id: str = ""  # empty for a replayed gold path


class HintSnapshotRow(Record):
    """One hint in a stored hint-memory snapshot: what retrieval sees, plus the exact Hint JSON (for rollback)."""

    hint_id: str
    category: str
    status: Literal["active", "disabled"]
    applicability: str
    text: str
    hint_json: str  # Hint.model_dump_json(): a rollback restores these bytes


class Trajectory(Record):
    """A verified-successful teacher episode, with the hints that were in its prompt."""

    trajectory_id: str
    episode: Episode
    hint_ids: list[str]
    hints_block: str  # the exact block inserted into the teacher's system prompt


class DistillExample(Record):
    """One hint-free training example: the student's prompt and the teacher's action."""

    example_id: str
    task_id: str
    category: str
    prompt: list[Message]
    completion: str
    rejected: str | None = None  # the base agent's action in the same state (DPO)
    # On-policy only: the hints block the teacher (the same model) scores with. Never part of the student's prompt.
    teacher_context: str = ""
    trajectory_id: str
    split: Literal["train", "validation"] = "train"
    # "completion": the loss is on `completion` only (one decision). "assistant_turns": a whole tool-calling
    # conversation (`prompt` + `completion` = every turn of a successful episode); the loss is on every assistant
    # turn, tool calls included, and on nothing else (tool results, user turns, the system prompt).
    loss_on: Literal["completion", "assistant_turns"] = "completion"
    # A conversation played with the model's own tool template (Episode.tool_format): the tool schemas the template
    # renders, and `prompt` keeps structured tool calls and `tool` messages. Empty for the text fallback, whose
    # tools are inside the system message; then left out of the record.
    tools: list[dict] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _lean(self, handler):
        """Leave out the default `loss_on` and empty `tools`, so older examples serialise (and hash) as before."""
        data = handler(self)
        if data.get("loss_on") == "completion":
            data.pop("loss_on")
        if not data.get("tools"):
            data.pop("tools", None)
        return data


class GateCheck(Record):
    name: str
    value: float
    threshold: float
    comparison: Literal[">=", "<="]
    passed: bool
    detail: str = ""


class PolicyScore(Record):
    """A policy's success on a suite, with the sample size and a 95% interval."""

    policy: str
    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float
    mean_steps: float = 0.0
    mean_tokens: float = 0.0
    suite: str = ""  # '' = the trained environment's held-out tasks; else an evaluate.retention_envs suite


class GateReport(Record):
    passed: bool
    checks: list[GateCheck]
    scores: list[PolicyScore]
    retention_scores: list[PolicyScore] = Field(default_factory=list)  # base and student on each retention suite
    retention: dict[str, float] = Field(default_factory=dict)
    leakage: dict[str, int] = Field(default_factory=dict)
    privacy: dict[str, float] = Field(default_factory=dict)  # canary probe: canary_leaks, canary_attempts, canaries
    reasons: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)

    def score(self, policy: str) -> PolicyScore | None:
        return next((s for s in self.scores if s.policy == policy), None)


# ---------------------------------------------------------------- walking every string of a record


def iter_strings(value: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a record, with its dotted path (`steps[0].prompt[1].content`), dict keys too.

    Why generic: privacy scrubbing and the injection screen must cover fields added to a contract
    later; a hand-written list of fields silently missed `category`, `task_id`, `steps[].prompt` and
    `valid_actions` once.
    """
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from iter_strings(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from iter_strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield f"{path}.<key>", key
            yield from iter_strings(item, f"{path}.{key}")


def map_strings(value: T, fn: Callable[[str, str], str], path: str = "") -> T:
    """A copy of `value` with every string replaced by `fn(path, text)` (paths as in `iter_strings`).

    Records are rebuilt with `model_copy`, so unchanged fields and non-string values are kept as is.
    """
    if isinstance(value, str):
        return fn(path, value)  # type: ignore[return-value]
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = map_strings(old, fn, f"{path}.{name}" if path else name)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list | tuple):
        items = [map_strings(item, fn, f"{path}[{i}]") for i, item in enumerate(value)]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)  # type: ignore[return-value]
    if isinstance(value, dict):
        out = {
            (fn(f"{path}.<key>", k) if isinstance(k, str) else k): map_strings(v, fn, f"{path}.{k}")
            for k, v in value.items()
        }
        return out  # type: ignore[return-value]
    return value
