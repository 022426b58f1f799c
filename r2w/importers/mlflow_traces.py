"""MLflow traces as Episodes, losslessly: the live path (`r2w collect mlflow`) and trace exports
(`Trace.to_json()` per record) share this mapping.

Every span is read, nested or not, in start order. CHAT_MODEL/LLM spans are model calls: inputs
`messages` (OpenAI or LangChain messages; `tools` or the `mlflow.chat.tools` attribute: the tool
schemas) is the prompt, outputs (a completion `{choices: [{message}]}`, a message, or text) the
reply, `mlflow.chat.tokenUsage` the tokens. TOOL spans are tool runs (span name = tool, inputs =
arguments, outputs = result; an ERROR status with no outputs = "error: <description>") answering
the reply's calls by name in order. The root (AGENT or any) span's inputs are the task. A trace
without model calls keeps the older mapping: one step per direct child span of the root.
Assessments: feedback decides the outcome (a failing value, or state ERROR = failure), expectations
are kept in `Episode.gold` as {name: value}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from r2w.contracts import Episode, Message, Step, content_hash
from r2w.importers.shapes import (
    ChatCall,
    FieldError,
    Outcome,
    ToolRun,
    as_text,
    is_failing_value,
    openai_messages,
    openai_tools,
    reply_message,
    steps_from_calls,
    task_text,
)

CHAT_TYPES = {"CHAT_MODEL", "LLM"}


def failure_reason(info) -> str:
    """Why a trace counts as a failure ('' when it does not)."""
    reasons = []
    if str(getattr(info, "state", "")).upper().endswith("ERROR"):
        reasons.append("trace status ERROR")
    for a in getattr(info, "assessments", None) or []:
        if getattr(a, "feedback", None) is None or getattr(a, "valid", True) is False:
            continue  # expectations, and feedback overridden by a later one
        if is_failing_value(a.value):
            why = f"feedback {a.name}={a.value!r}"
            reasons.append(why + (f" ({a.rationale})" if a.rationale else ""))
    return "; ".join(reasons)


def gold_of(info) -> dict:
    """Expectations (`mlflow.log_expectation`) as {name: value}: gold data kept next to the episode."""
    out = {}
    for a in getattr(info, "assessments", None) or []:
        if getattr(a, "expectation", None) is not None and getattr(a, "valid", True) is not False:
            value = a.value
            out[str(a.name)] = (
                value if isinstance(value, str | int | float | bool | list | dict) or value is None else str(value)
            )
    return out


def outcome_of_trace(info) -> Outcome:
    reason = failure_reason(info)
    feedback = [a for a in getattr(info, "assessments", None) or [] if getattr(a, "feedback", None) is not None]
    verdict = "mlflow:feedback " + ",".join(sorted({str(a.name) for a in feedback})) if feedback else "mlflow:state"
    if reason:
        return Outcome(False, 0.0, reason, verdict)
    return Outcome(True, 1.0, "no failing feedback, state OK", verdict)


def trace_fields(trace, location: str, strict: bool = False) -> dict:
    """Episode fields (all but the verdict) of an MLflow trace. With `strict`, a model-call span whose
    messages do not parse is a FieldError naming the span; otherwise it is kept as text."""
    info, spans = trace.info, sorted(trace.data.spans, key=lambda s: s.start_time_ns or 0)
    root = next((s for s in spans if s.parent_id is None), None)
    task = task_text(root.inputs if root is not None else trace.data.request)
    calls, runs = [], []
    for i, span in enumerate(trace.data.spans):
        kind = str(span.span_type or "").upper()
        path = f"data.spans[{i}]"
        if kind in CHAT_TYPES:
            calls.append(_chat_call(span, path, strict))
        elif kind == "TOOL":
            runs.append(_tool_run(span))
    if calls:
        steps = steps_from_calls(calls, runs)
    else:
        children = [s for s in spans if root is not None and s.parent_id == root.span_id]
        steps = [_span_step(i, s) for i, s in enumerate(children)]
    if not steps:
        response = as_text(root.outputs if root is not None else trace.data.response)
        steps = [Step(index=0, observation=task, prompt=[], response=response, action=response)]
    tools, seen = [], set()
    for call in calls:
        for tool in call.tools:
            if tool["function"]["name"] not in seen:
                seen.add(tool["function"]["name"])
                tools.append(tool)
    error = root.status.description if root is not None and root.status.description else ""
    name = (info.tags or {}).get("mlflow.traceName") or (root.name if root is not None else "trace")
    metadata = info.trace_metadata or {}
    model = str(metadata.get("mlflow.modelId", "")) or next((c.model for c in calls if c.model), "")
    return dict(
        episode_id="mt-" + content_hash(info.trace_id)[:16],
        env="mlflow",
        category=name,
        task_id=f"mlflow/{location}/{info.trace_id}",
        split="train",
        seed=0,
        task=task,
        steps=steps,
        policy="mlflow-trace",
        model=model,
        wall_time_s=round((info.execution_duration or 0) / 1000, 3),
        created_at=datetime.fromtimestamp(info.request_time / 1000, UTC),
        source="mlflow-trace",
        tools=tools,
        gold=gold_of(info),
        outcome=error,  # the root's error; the caller joins it with the verdict's reason
    )


def trace_to_episode(trace, experiment: str):
    """A live MLflow trace as an Episode (the caller has already decided it is a failure)."""
    fields = trace_fields(trace, experiment)
    outcome = outcome_of_trace(trace.info)
    text = "; ".join(x for x in (failure_reason(trace.info), fields.pop("outcome")) if x)
    return Episode(**fields, success=False, score=0.0, outcome=text, verdict_by=outcome.verdict_by)


def _attr(span, key: str):
    attributes = span.attributes or {}
    return attributes.get(key)


def _count(usage: object, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return max(int(float(value)), 0)
    except (ValueError, OverflowError):
        return 0


def _chat_call(span, path: str, strict: bool) -> ChatCall:
    inputs, outputs = span.inputs, span.outputs
    usage = _attr(span, "mlflow.chat.tokenUsage") or {}
    start = (span.start_time_ns or 0) / 1e9
    tokens = (_count(usage, "input_tokens"), _count(usage, "output_tokens"))
    raw_messages = inputs.get("messages") if isinstance(inputs, dict) else inputs
    if isinstance(raw_messages, list) and raw_messages and isinstance(raw_messages[0], list):
        raw_messages = raw_messages[0]  # LangChain chat models log a batch of conversations
    try:
        prompt = openai_messages(raw_messages, f"{path}.inputs.messages")
        reply = reply_message(outputs, f"{path}.outputs") if outputs is not None else Message(role="assistant")
        raw_tools = _attr(span, "mlflow.chat.tools")
        if raw_tools is None and isinstance(inputs, dict):
            raw_tools = inputs.get("tools")
        tools = openai_tools(raw_tools, f"{path}.attributes.mlflow.chat.tools")
    except FieldError:
        if strict:
            raise
        text = as_text(outputs)
        return ChatCall([], Message(role="assistant", content=text), start, *tokens)
    model = inputs.get("model") if isinstance(inputs, dict) and isinstance(inputs.get("model"), str) else ""
    return ChatCall(prompt, reply, start, tokens[0], tokens[1], tools, model)


def _tool_run(span) -> ToolRun:
    outputs = span.outputs
    if outputs is None and str(span.status.status_code).upper().endswith("ERROR"):
        result = f"error: {span.status.description}"
    else:
        result = as_text(outputs)
    try:
        arguments = json.dumps(span.inputs if span.inputs is not None else {}, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        arguments = json.dumps(as_text(span.inputs))
    return ToolRun(span.name or "tool", arguments, result, "", (span.start_time_ns or 0) / 1e9)


def _span_step(index: int, span) -> Step:
    """A child span of a trace without model calls, as the older mapping made it: inputs -> observation,
    outputs -> action, chat `messages` -> prompt."""
    inputs = span.inputs
    prompt: list[Message] = []
    if isinstance(inputs, dict) and isinstance(inputs.get("messages"), list):
        for m in inputs["messages"]:
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant"):
                prompt.append(Message(role=m["role"], content=str(m.get("content", ""))))
    usage = (span.attributes or {}).get("mlflow.chat.tokenUsage") or {}
    response = _lone_text(span.outputs)
    return Step(
        index=index,
        observation=_lone_text(inputs),
        prompt=prompt,
        response=response,
        action=response,
        prompt_tokens=_count(usage, "input_tokens"),
        completion_tokens=_count(usage, "output_tokens"),
    )


def _lone_text(value: object) -> str:
    """Span inputs/outputs as text: a lone string argument as is, anything else as JSON."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        return next(iter(value.values()))
    return as_text(value)
