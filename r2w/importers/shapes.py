"""The shapes importers map from and to: messages and tool calls in OpenAI's, LangChain's and the
GenAI conventions' forms, outcomes, and steps built from a conversation or from model calls and tool runs.

No import of r2w.traces here: r2w.traces (the live MLflow path) uses these too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from r2w.contracts import Message, Step, ToolCall, ToolFunction, content_hash
from r2w.tool_calls import render_turn

TASK_KEYS = ("task", "question", "query", "prompt", "input", "instruction")
FAILING_VALUES = {"no", "n", "false", "fail", "failed", "failure", "incorrect", "wrong", "bad", "0", "0.0"}
PASSING_VALUES = {"yes", "y", "true", "pass", "passed", "success", "correct", "right", "good", "1", "1.0"}


def is_failing_value(value: object) -> bool:
    if isinstance(value, bool):
        return value is False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return value.strip().lower() in FAILING_VALUES
    return False


class FieldError(ValueError):
    """A field of a record that cannot be mapped: where (a dotted path in the source) and why."""

    def __init__(self, path: str, problem: str, value: object = None, *, show: bool = True) -> None:
        super().__init__(problem)
        self.path, self.problem, self.value, self.show = path, problem, value, show
        self.number: int | None = None  # the record, when the converter knows better than the caller


@dataclass
class Outcome:
    success: bool
    score: float
    text: str
    verdict_by: str
    gold: dict = field(default_factory=dict)  # reference data an outcomes file gave (`expected`): Episode.gold


@dataclass
class Draft:
    """An episode found in a source, before its verdict is settled."""

    number: int  # the record it starts in (errors about the episode name it)
    key: str  # its id in the source: what an --outcomes file refers to
    fields: dict  # Episode fields except the verdict (success, score, outcome, verdict_by)
    outcome: Outcome | None = None
    outcome_field: str = "success"  # where a missing outcome would have been


# ---------------------------------------------------------------- typed access with source paths


def need(value: object, path: str, kind: type | tuple, what: str) -> object:
    """`value` when it is of `kind` (a bool is no number), else a FieldError naming `path`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kind) and (bool in kinds or not isinstance(value, bool)):
        return value
    raise FieldError(path, f"expected {what}", value)


def opt(record: dict, key: str, path: str, kind: type | tuple, what: str, default=None):
    value = record.get(key)
    if value is None:
        return default
    return need(value, f"{path}.{key}" if path else key, kind, what)


def as_json_text(value: object, path: str) -> str:
    """Tool-call arguments as JSON text: a JSON string as is (it must parse), an object dumped."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        if not value.strip():
            return "{}"
        try:
            json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = getattr(exc, "msg", "nested too deeply")
            raise FieldError(path, f"arguments are not valid JSON text ({msg})", value) from None
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise FieldError(path, "arguments cannot be written as JSON", value) from None


def as_text(value: object) -> str:
    """A value as text: a string as is, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def content_text(content: object, path: str) -> str:
    """OpenAI/LangChain message content: a string, or a list of parts whose text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text", part.get("content"))
                if isinstance(text, str) and part.get("type", "text") in ("text", "input_text", "output_text"):
                    texts.append(text)
            else:
                raise FieldError(f"{path}[{i}]", "expected a content part (an object)", part)
        return "\n".join(texts)
    raise FieldError(path, "expected a string or a list of content parts", content)


def task_text(value: object) -> str:
    """A root run's inputs as the task: a conventional argument (task, question, ...) or all of it."""
    if isinstance(value, dict):
        for key in TASK_KEYS:
            if isinstance(value.get(key), str):
                return value[key]
        if len(value) == 1 and isinstance(next(iter(value.values())), str):
            return next(iter(value.values()))
    return as_text(value)


def parse_time(value: object, path: str) -> datetime:
    """ISO 8601 text (naive = UTC) or Unix seconds (int/float)."""
    if isinstance(value, bool):
        raise FieldError(path, "expected an ISO 8601 datetime or Unix seconds", value)
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise FieldError(path, "expected an ISO 8601 datetime or Unix seconds", value)


def parse_nanos(value: object, path: str) -> datetime:
    """OTLP time: Unix nanoseconds, a decimal string (64-bit integers are strings in OTLP/JSON) or a number."""
    try:
        if isinstance(value, str | int) and not isinstance(value, bool):
            return datetime.fromtimestamp(int(value) / 1e9, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise FieldError(path, "expected Unix nanoseconds (a decimal string or an integer)", value)


# ---------------------------------------------------------------- messages


ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant"}
ROLES |= {"ai": "assistant", "tool": "tool", "function": "tool"}


def tool_call(raw: object, path: str, index: int = 0) -> ToolCall:
    """One call in OpenAI's shape ({id, type, function: {name, arguments}}) or LangChain's ({id, name, args})."""
    if not isinstance(raw, dict):
        raise FieldError(path, "expected a tool call object", raw)
    fn = raw.get("function") if isinstance(raw.get("function"), dict) else raw
    fpath = f"{path}.function" if fn is not raw else path
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError(f"{fpath}.name", "expected the tool's name (a non-empty string)", name)
    args = fn.get("arguments", fn.get("args", fn.get("input")))
    call_id = raw.get("id") or raw.get("call_id") or f"call_{index}"
    if not isinstance(call_id, str):
        raise FieldError(f"{path}.id", "expected a string", call_id)
    return ToolCall(id=call_id, function=ToolFunction(name=name, arguments=as_json_text(args, f"{fpath}.arguments")))


def openai_message(raw: object, path: str) -> Message:
    """An OpenAI chat message (or a LangChain message dict: type human/ai/tool, or its serialised form)."""
    if not isinstance(raw, dict):
        raise FieldError(path, "expected a message object", raw)
    if raw.get("lc") == 1 and isinstance(raw.get("kwargs"), dict):  # LangChain's serialised message
        kind = raw.get("id", [""])[-1] if isinstance(raw.get("id"), list) else ""
        role = {"HumanMessage": "user", "AIMessage": "assistant", "SystemMessage": "system", "ToolMessage": "tool"}
        raw = {**raw["kwargs"], "role": role.get(str(kind), raw["kwargs"].get("type", ""))}
        path = f"{path}.kwargs"
    role = raw.get("role", raw.get("type"))
    if role not in ROLES:
        raise FieldError(f"{path}.role", "expected system, developer, user, assistant or tool", role)
    calls_raw = raw.get("tool_calls")
    if not calls_raw and isinstance(raw.get("additional_kwargs"), dict):
        calls_raw = raw["additional_kwargs"].get("tool_calls")
    if calls_raw is not None and not isinstance(calls_raw, list):
        raise FieldError(f"{path}.tool_calls", "expected a list of tool calls", calls_raw)
    calls = [tool_call(c, f"{path}.tool_calls[{i}]", i) for i, c in enumerate(calls_raw or [])]
    if isinstance(raw.get("function_call"), dict):  # the legacy single call
        calls.append(tool_call({"function": raw["function_call"]}, f"{path}.function_call", len(calls)))
    tool_call_id = raw.get("tool_call_id")
    if tool_call_id is not None and not isinstance(tool_call_id, str):
        raise FieldError(f"{path}.tool_call_id", "expected a string", tool_call_id)
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise FieldError(f"{path}.name", "expected a string", name)
    mapped = ROLES[role]
    return Message(
        role=mapped,
        content=content_text(raw.get("content"), f"{path}.content"),
        tool_calls=calls if mapped == "assistant" else [],
        tool_call_id=tool_call_id if mapped == "tool" else None,
        name=name if mapped == "tool" else None,
    )


def openai_messages(raw: object, path: str) -> list[Message]:
    if not isinstance(raw, list):
        raise FieldError(path, "expected a list of messages", raw)
    return [openai_message(m, f"{path}[{i}]") for i, m in enumerate(raw)]


def openai_tools(raw: object, path: str) -> list[dict]:
    """Tool schemas as OpenAI function tools ({type: function, function: {name, description, parameters}})."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FieldError(path, "expected a list of tool schemas", raw)
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise FieldError(f"{path}[{i}]", "expected a tool schema object", tool)
        fn = tool.get("function", tool)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise FieldError(f"{path}[{i}].name", "expected the tool's name (a non-empty string)", fn)
        schema = {k: v for k, v in fn.items() if k in ("name", "description", "parameters", "strict")}
        out.append({"type": "function", "function": schema})
    return out


def reply_message(raw: object, path: str) -> Message:
    """A model's reply in the shapes chat APIs and tracers log it: an OpenAI completion ({choices:
    [{message}]}), a LangChain result ({generations: [[{message | text}]]}), {message: ...}, a message, or text."""
    if isinstance(raw, str):
        return Message(role="assistant", content=raw)
    if isinstance(raw, list) and raw and isinstance(raw[0], dict) and ("role" in raw[0] or "type" in raw[0]):
        return reply_message(raw[-1], f"{path}[{len(raw) - 1}]")
    if not isinstance(raw, dict):
        raise FieldError(path, "expected the model's reply (a message, a completion or text)", raw)
    if isinstance(raw.get("choices"), list) and raw["choices"]:
        choice = raw["choices"][0]
        if isinstance(choice, dict) and "message" in choice:
            return reply_message(choice["message"], f"{path}.choices[0].message")
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            return Message(role="assistant", content=choice["text"])
        raise FieldError(f"{path}.choices[0]", "expected {message: ...}", choice)
    if isinstance(raw.get("generations"), list) and raw["generations"]:
        gen = raw["generations"][0]
        gen = gen[0] if isinstance(gen, list) and gen else gen
        if isinstance(gen, dict) and isinstance(gen.get("message"), dict):
            return reply_message(gen["message"], f"{path}.generations[0][0].message")
        if isinstance(gen, dict) and isinstance(gen.get("text"), str):
            return Message(role="assistant", content=gen["text"])
        raise FieldError(f"{path}.generations[0]", "expected {message: ...} or {text: ...}", gen)
    if isinstance(raw.get("message"), dict):
        return reply_message(raw["message"], f"{path}.message")
    if "role" in raw or "type" in raw or raw.get("lc") == 1:
        message = openai_message(raw, path)
        if message.role != "assistant":
            raise FieldError(f"{path}.role", "expected the assistant's reply", raw.get("role", raw.get("type")))
        return message
    if "content" in raw or "tool_calls" in raw:
        return openai_message({**raw, "role": "assistant"}, path)
    raise FieldError(path, "expected the model's reply (a message, a completion or text)", raw, show=False)


# ---------------------------------------------------------------- outcomes


def outcome_of(record: dict, path: str, verdict_by: str) -> Outcome | None:
    """The outcome a record states (`success`, else `label`, else `score`), or None when it states none."""
    where = f"{path}." if path else ""
    score = record.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise FieldError(f"{where}score", "expected a number", score)
    stated = record.get("outcome") if isinstance(record.get("outcome"), str) else ""
    if "success" in record and record["success"] is not None:
        success = record["success"]
        if not isinstance(success, bool):
            raise FieldError(f"{where}success", "expected true or false", success)
        text = record.get("outcome") if isinstance(record.get("outcome"), str) else ""
        value = float(score) if score is not None else float(success)
        return Outcome(success, value, text or ("success" if success else "failure"), f"{verdict_by}:success")
    if "label" in record and record["label"] is not None:
        label = record["label"]
        if not isinstance(label, str | bool | int | float):
            raise FieldError(f"{where}label", "expected a label (text, true/false or a number)", label)
        failing = is_failing_value(label)
        if not failing and not (isinstance(label, bool) or str(label).strip().lower() in PASSING_VALUES):
            if not isinstance(label, int | float):
                raise FieldError(f"{where}label", "expected a pass/fail label (pass, fail, correct, 1, 0 ...)", label)
        value = float(score) if score is not None else (0.0 if failing else 1.0)
        return Outcome(not failing, value, stated or f"label {label}", f"{verdict_by}:label")
    if score is not None:
        return Outcome(not is_failing_value(score), float(score), stated or f"score {score}", f"{verdict_by}:score")
    return None


# ---------------------------------------------------------------- steps


@dataclass
class ChatCall:
    """One model call: what it was sent, what it answered, when."""

    prompt: list[Message]
    reply: Message
    start: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tools: list[dict] = field(default_factory=list)
    model: str = ""


@dataclass
class ToolRun:
    """One tool execution as a tracer logged it (its call id when known)."""

    name: str
    arguments: str  # JSON text
    result: str
    call_id: str = ""
    start: float = 0.0


def steps_from_messages(messages: list[Message], usage: tuple[int, int] = (0, 0)) -> list[Step]:
    """One step per assistant message of a whole conversation: the messages before it are its prompt,
    the tool messages right after it its tool results."""
    names = {c.id: c.function.name for m in messages for c in m.tool_calls}
    messages = [
        m.model_copy(update={"name": names[m.tool_call_id]})
        if m.role == "tool" and not m.name and m.tool_call_id in names
        else m
        for m in messages
    ]
    steps = []
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        results = []
        for later in messages[i + 1 :]:
            if later.role != "tool":
                break
            results.append(later)
        steps.append(_step(len(steps), messages[:i], m, results))
    if steps and any(usage):  # a record's usage covers its last completion
        steps[-1] = steps[-1].model_copy(update={"prompt_tokens": usage[0], "completion_tokens": usage[1]})
    return steps


def steps_from_calls(calls: list[ChatCall], runs: list[ToolRun]) -> list[Step]:
    """One step per model call. A call's tool results are the `tool` messages answering its calls in a
    later call's prompt, else the tool runs with the call's id, else the next unused run of that tool.
    A tool run that answers no call is kept as a call of the last model call before it."""
    calls = sorted(calls, key=lambda c: c.start)
    runs = sorted(runs, key=lambda r: r.start)
    used: set[int] = set()
    answers: dict[str, Message] = {}
    for call in calls:
        for m in call.prompt:
            if m.role == "tool" and m.tool_call_id:
                answers.setdefault(m.tool_call_id, m)
    replies = [c.reply.model_copy(deep=True) for c in calls]
    results: list[list[Message]] = [[] for _ in calls]
    for n, (call, reply) in enumerate(zip(calls, replies, strict=True)):
        for tc in reply.tool_calls:
            run_index = _match_run(runs, used, tc, call.start)
            if run_index is not None:
                used.add(run_index)
            if tc.id in answers:
                answer = answers[tc.id]
                results[n].append(answer if answer.name else answer.model_copy(update={"name": tc.function.name}))
            elif run_index is not None:
                run = runs[run_index]
                results[n].append(Message(role="tool", tool_call_id=tc.id, name=run.name, content=run.result))
    for i, run in enumerate(runs):  # runs no reply asked for: the tracer saw calls the replies lack
        if i in used:
            continue
        n = max((k for k, c in enumerate(calls) if c.start <= run.start), default=None)
        call_id = run.call_id or f"run_{i}"
        tc = ToolCall(id=call_id, function=ToolFunction(name=run.name, arguments=run.arguments))
        message = Message(role="tool", tool_call_id=call_id, name=run.name, content=run.result)
        if n is None:
            calls.insert(0, ChatCall(prompt=[], reply=Message(role="assistant"), start=run.start))
            replies.insert(0, Message(role="assistant"))
            results.insert(0, [])
            n = 0
        replies[n].tool_calls.append(tc)
        results[n].append(message)
    steps = []
    for n, call in enumerate(calls):
        step = _step(n, call.prompt, replies[n], results[n])
        steps.append(
            step.model_copy(update={"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens})
        )
    return steps


def _match_run(runs: list[ToolRun], used: set[int], tc: ToolCall, after: float) -> int | None:
    for i, run in enumerate(runs):
        if i not in used and run.call_id and run.call_id == tc.id:
            return i
    for i, run in enumerate(runs):
        if i not in used and not run.call_id and run.name == tc.function.name and run.start >= after:
            return i
    return None


def _step(index: int, prompt: list[Message], reply: Message, results: list[Message]) -> Step:
    last = next((m.content for m in reversed(prompt) if m.role in ("user", "tool")), "")
    return Step(
        index=index,
        observation=last,
        prompt=list(prompt),
        response=reply.content,
        action=render_turn(reply),
        tool_calls=list(reply.tool_calls),
        tool_results=list(results),
    )


def first_user_text(messages: list[Message]) -> str:
    return next((m.content for m in messages if m.role == "user"), "")


def episode_id(prefix: str, key: str) -> str:
    return f"{prefix}-" + content_hash(key)[:16]


def tools_of(calls: list[ChatCall]) -> list[dict]:
    seen, out = set(), []
    for call in calls:
        for tool in call.tools:
            name = tool.get("function", {}).get("name")
            if name not in seen:
                seen.add(name)
                out.append(tool)
    return out


def trace_fields(
    fmt: str,
    prefix: str,
    trace_id: str,
    category: str,
    task: str,
    calls: list[ChatCall],
    runs: list[ToolRun],
    created_at,
    policy: str,
) -> dict:
    """The Episode fields every trace format fills the same way: ids from the trace id, steps from its model
    calls and tool runs, the tools they offered, the first model named."""
    return dict(
        episode_id=episode_id(prefix, trace_id),
        env=fmt,
        category=category,
        task_id=f"{fmt}/{trace_id}",
        split="train",
        seed=0,
        task=task,
        steps=steps_from_calls(calls, runs),
        tools=tools_of(calls),
        policy=policy,
        model=next((c.model for c in calls if c.model), ""),
        created_at=created_at,
        source=fmt,
    )
