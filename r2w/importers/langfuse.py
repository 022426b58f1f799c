"""Langfuse trace exports: traces as the public API returns them with full details (`GET
/api/public/traces/{id}`: `id, timestamp, name, input, output, observations, scores`), one per record
(JSONL or a JSON array).

Observations are ordered by `startTime`. A GENERATION is a model call: `input` (a message list, or
`{messages, tools}`) is the prompt, `output` (a message, a completion `{choices: [{message}]}`, or text)
the reply, `usage`/`usageDetails` `input`/`output` its tokens. A TOOL observation, or a SPAN named
like a tool a generation called, is a tool run (name = tool, input = arguments, output = result;
`level` ERROR with no output = "error: <statusMessage>"). EVENTs carry nothing the contract holds.
The trace's `input` is the task. Outcome: a failing score (BOOLEAN/NUMERIC `value` 0, CATEGORICAL
`stringValue` fail/incorrect/no ...), else an ERROR-level observation (its `statusMessage`).
"""

from __future__ import annotations

from r2w.importers.common import guarded
from r2w.importers.shapes import (
    ChatCall,
    Draft,
    FieldError,
    Outcome,
    ToolRun,
    as_json_text,
    as_text,
    first_user_text,
    is_failing_value,
    need,
    openai_messages,
    openai_tools,
    parse_time,
    reply_message,
    task_text,
    trace_fields,
)

FORMAT = "langfuse"
TOOL_TYPES = {"TOOL"}


def _convert(raw: object, number: int) -> list[Draft]:
    need(raw, "<record>", dict, "a Langfuse trace object {id, timestamp, observations, scores}")
    trace_id = need(raw.get("id"), "id", str, "the trace's id (a string)")
    created = parse_time(raw.get("timestamp"), "timestamp")
    observations = need(raw.get("observations") or [], "observations", list, "a list of observations")
    scores = need(raw.get("scores") or [], "scores", list, "a list of scores")
    obs = []
    for i, o in enumerate(observations):
        path = f"observations[{i}]"
        need(o, path, dict, "an observation object")
        need(o.get("type"), f"{path}.type", str, "GENERATION, SPAN, EVENT, TOOL ...")
        parent = o.get("parentObservationId")
        if parent is not None:
            need(parent, f"{path}.parentObservationId", str, "an observation id")
        start = parse_time(o.get("startTime"), f"{path}.startTime").timestamp()
        obs.append((start, i, o))
    obs.sort(key=lambda t: (t[0], t[1]))
    calls: list[ChatCall] = []
    for start, i, o in obs:
        if o["type"] == "GENERATION":
            calls.append(_generation(o, start, f"observations[{i}]"))
    called = {tc.function.name for c in calls for tc in c.reply.tool_calls}
    runs = []
    for start, i, o in obs:
        if o["type"] in TOOL_TYPES or (o["type"] == "SPAN" and o.get("name") in called):
            runs.append(_tool_run(o, start, f"observations[{i}]"))
    outcome = _outcome(scores, [o for _, _, o in obs])
    prompts = [m for c in calls for m in c.prompt]
    task = task_text(raw.get("input")) if raw.get("input") is not None else first_user_text(prompts)
    fields = trace_fields(FORMAT, "lf", trace_id, str(raw.get("name") or "trace"), task, calls, runs, created,
                          "langfuse-trace")  # fmt: skip
    return [Draft(number, trace_id, fields, outcome)]


def _generation(o: dict, start: float, path: str) -> ChatCall:
    raw = o.get("input")
    tools = []
    if isinstance(raw, dict):
        tools = openai_tools(raw.get("tools"), f"{path}.input.tools")
        raw = raw.get("messages", [])
    prompt = openai_messages(raw if raw is not None else [], f"{path}.input")
    reply = reply_message(o.get("output") if o.get("output") is not None else "", f"{path}.output")
    usage = o.get("usageDetails") if isinstance(o.get("usageDetails"), dict) else o.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    tokens = []
    for key in ("input", "output"):
        value = usage.get(key, 0)
        tokens.append(value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0)
    model = o.get("model") if isinstance(o.get("model"), str) else ""
    return ChatCall(prompt, reply, start, tokens[0], tokens[1], tools, model)


def _tool_run(o: dict, start: float, path: str) -> ToolRun:
    name = o.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError(f"{path}.name", "expected the tool's name (a non-empty string)", name)
    arguments = as_json_text(o.get("input") if o.get("input") is not None else {}, f"{path}.input")
    output = o.get("output")
    if output is None and o.get("level") == "ERROR":
        result = f"error: {o.get('statusMessage') or ''}"
    else:
        result = as_text(output)
    call_id = o.get("metadata", {}).get("tool_call_id", "") if isinstance(o.get("metadata"), dict) else ""
    return ToolRun(name, arguments, result, call_id if isinstance(call_id, str) else "", start)


def _outcome(scores: list, observations: list[dict]) -> Outcome:
    failing, names = [], []
    for i, s in enumerate(scores):
        need(s, f"scores[{i}]", dict, "a score object {name, value, dataType}")
        name = need(s.get("name"), f"scores[{i}].name", str, "a string")
        names.append(name)
        value = s.get("stringValue") if s.get("dataType") == "CATEGORICAL" else s.get("value")
        if value is None:
            value = s.get("value", s.get("stringValue"))
        if is_failing_value(value):
            comment = f" ({s['comment']})" if isinstance(s.get("comment"), str) and s["comment"] else ""
            failing.append(f"score {name}={value!r}{comment}")
    verdict = "langfuse:score " + ",".join(sorted(set(names))) if names else "langfuse:observation level"
    if failing:
        return Outcome(False, 0.0, "; ".join(failing), verdict)
    errors = [o for o in observations if o.get("level") == "ERROR"]
    if errors and not names:
        return Outcome(False, 0.0, f"ERROR in {errors[0].get('name')}: {errors[0].get('statusMessage') or ''}", verdict)
    return Outcome(True, 1.0, "no failing score", verdict)


convert = guarded(_convert)
