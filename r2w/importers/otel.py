"""OpenTelemetry GenAI spans in an OTLP/JSON export (`resourceSpans` -> `scopeSpans` -> `spans`, attributes
as key/value lists, hex ids, 64-bit integers as strings), as a collector's file exporter writes it: one
export per line, or one pretty-printed export.

Spans are grouped by `traceId`; traces without a GenAI span (`gen_ai.operation.name`) are ignored.
A `chat` (or `text_completion`/`generate_content`) span is one step: `gen_ai.input.messages` (with
`gen_ai.system_instructions` first) is its prompt, the first assistant message of
`gen_ai.output.messages` its reply (parts: `text`, `tool_call`; `tool_call_response` parts are tool
messages), `gen_ai.tool.definitions` the tools, `gen_ai.usage.*_tokens` its tokens. An
`execute_tool` span (`gen_ai.tool.name`, `gen_ai.tool.call.id`, `gen_ai.tool.call.arguments`,
`gen_ai.tool.call.result`) answers the call with its id. The outcome: a `gen_ai.evaluation.result`
event (`gen_ai.evaluation.score.label`, else `.score.value`; 0/fail/incorrect = failure) on any span,
else the root span's status (ERROR = failure, with its message).
"""

from __future__ import annotations

import base64
import json

from r2w.contracts import Message
from r2w.importers.common import field_error, guarded
from r2w.importers.shapes import (
    ChatCall,
    Draft,
    FieldError,
    Outcome,
    ToolRun,
    as_json_text,
    as_text,
    first_user_text,
    need,
    openai_tools,
    parse_nanos,
    tool_call,
    trace_fields,
)
from r2w.traces import FAILING_VALUES, is_failing_value

FORMAT = "otel"
CHAT_OPERATIONS = {"chat", "text_completion", "generate_content"}
STATUS_ERROR = (2, "STATUS_CODE_ERROR")


def any_value(raw: object, path: str) -> object:
    """An OTLP AnyValue as Python: string, bool, int, double, array, kvlist or bytes value."""
    if not isinstance(raw, dict):
        raise FieldError(path, "expected an OTLP AnyValue object", raw)
    if "stringValue" in raw:
        return need(raw["stringValue"], f"{path}.stringValue", str, "a string")
    if "boolValue" in raw:
        return need(raw["boolValue"], f"{path}.boolValue", bool, "true or false")
    if "intValue" in raw:
        value = raw["intValue"]
        try:
            if isinstance(value, str | int) and not isinstance(value, bool):
                return int(value)
        except ValueError:
            pass
        raise FieldError(f"{path}.intValue", "expected an integer (a decimal string in OTLP/JSON)", value)
    if "doubleValue" in raw:
        return float(need(raw["doubleValue"], f"{path}.doubleValue", (int, float), "a number"))
    if "arrayValue" in raw:
        values = need(raw["arrayValue"], f"{path}.arrayValue", dict, "an object").get("values", [])
        need(values, f"{path}.arrayValue.values", list, "a list")
        return [any_value(v, f"{path}.arrayValue.values[{i}]") for i, v in enumerate(values)]
    if "kvlistValue" in raw:
        values = need(raw["kvlistValue"], f"{path}.kvlistValue", dict, "an object").get("values", [])
        return attributes(values, f"{path}.kvlistValue.values")
    if "bytesValue" in raw:
        try:
            return base64.b64decode(need(raw["bytesValue"], f"{path}.bytesValue", str, "base64 text"), validate=True)
        except ValueError:
            raise FieldError(f"{path}.bytesValue", "expected base64 text", raw["bytesValue"]) from None
    if not raw:
        return None
    raise FieldError(
        path, "expected one of stringValue, boolValue, intValue, doubleValue, arrayValue, kvlistValue", raw
    )


def attributes(raw: object, path: str) -> dict:
    if raw is None:
        return {}
    need(raw, path, list, "a list of {key, value}")
    out = {}
    for i, kv in enumerate(raw):
        need(kv, f"{path}[{i}]", dict, "an object {key, value}")
        key = need(kv.get("key"), f"{path}[{i}].key", str, "a string")
        out[key] = any_value(kv.get("value", {}), f"{path}[{i}].value")
    return out


def _structured(value: object, path: str) -> object:
    """A structured attribute: JSON text (how SDKs record it on spans) or an already structured value."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise FieldError(path, "expected JSON text", value) from None
    return value


def parts_messages(raw: object, path: str) -> list[Message]:
    """GenAI semantic-convention messages ({role, parts: [text | tool_call | tool_call_response ...]})."""
    raw = _structured(raw, path)
    need(raw, path, list, "a list of messages")
    out: list[Message] = []
    for i, m in enumerate(raw):
        mpath = f"{path}[{i}]"
        need(m, mpath, dict, "a message {role, parts}")
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise FieldError(f"{mpath}.role", "expected system, user, assistant or tool", role)
        parts = need(m.get("parts"), f"{mpath}.parts", list, "a list of parts")
        texts, calls = [], []
        for j, part in enumerate(parts):
            ppath = f"{mpath}.parts[{j}]"
            need(part, ppath, dict, "a part {type, ...}")
            kind = part.get("type")
            if kind == "text":
                texts.append(need(part.get("content"), f"{ppath}.content", str, "a string"))
            elif kind == "tool_call":
                calls.append(tool_call(part, ppath, len(calls)))
            elif kind == "tool_call_response":
                call_id = need(part.get("id"), f"{ppath}.id", str, "the tool call's id (a string)")
                result = part.get("response", part.get("result"))
                out.append(Message(role="tool", tool_call_id=call_id, content=as_text(result)))
            elif not isinstance(kind, str):
                raise FieldError(f"{ppath}.type", "expected the part's type (a string)", kind)
            # other part types (reasoning, blob, uri, file) carry nothing the contract holds
        if texts or calls or role != "tool":
            content = "\n".join(texts)
            out.append(Message(role=role, content=content, tool_calls=calls if role == "assistant" else []))
    return out


def _tool_definitions(raw: object, path: str) -> list[dict]:
    raw = _structured(raw, path)
    need(raw, path, list, "a list of tool definitions")
    return openai_tools([t.get("function", t) if isinstance(t, dict) else t for t in raw], path)


def _status(span: dict, path: str) -> tuple[bool, str]:
    status = span.get("status") or {}
    need(status, f"{path}.status", dict, "an object {code, message}")
    code = status.get("code", 0)
    message = status.get("message", "")
    return code in STATUS_ERROR, message if isinstance(message, str) else ""


def _evaluation(event_attrs: dict) -> Outcome:
    name = str(event_attrs.get("gen_ai.evaluation.name", "evaluation"))
    label = event_attrs.get("gen_ai.evaluation.score.label")
    value = event_attrs.get("gen_ai.evaluation.score.value")
    explanation = event_attrs.get("gen_ai.evaluation.explanation")
    failing = is_failing_value(label) or str(label).strip().lower() in FAILING_VALUES | {"not_relevant"}
    if label is None:
        failing = is_failing_value(value)
    score = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float(not failing)
    text = f"evaluation {name}=" + (str(label) if label is not None else str(value))
    if isinstance(explanation, str) and explanation:
        text += f" ({explanation})"
    return Outcome(not failing, score, text, f"otel:gen_ai.evaluation.result:{name}")


def convert(name: str, records: list[tuple[int, object]], privacy=None):
    """Drafts of every GenAI trace in the file (a trace's spans may span several records)."""
    traces: dict[str, list[tuple[int, str, dict]]] = {}

    def collect(raw: object, number: int) -> list[Draft]:
        need(raw, "<record>", dict, "an OTLP export object {resourceSpans: [...]}")
        resource_spans = need(raw.get("resourceSpans"), "resourceSpans", list, "a list")
        for r, rs in enumerate(resource_spans):
            need(rs, f"resourceSpans[{r}]", dict, "an object")
            for s, ss in enumerate(need(rs.get("scopeSpans", []), f"resourceSpans[{r}].scopeSpans", list, "a list")):
                need(ss, f"resourceSpans[{r}].scopeSpans[{s}]", dict, "an object")
                spans = need(ss.get("spans", []), f"resourceSpans[{r}].scopeSpans[{s}].spans", list, "a list")
                for k, span in enumerate(spans):
                    path = f"resourceSpans[{r}].scopeSpans[{s}].spans[{k}]"
                    need(span, path, dict, "a span object")
                    trace_id = need(span.get("traceId"), f"{path}.traceId", str, "a hex trace id")
                    need(span.get("spanId"), f"{path}.spanId", str, "a hex span id")
                    traces.setdefault(trace_id, []).append((number, path, span))
        return []

    _, errors = guarded(collect)(name, records, privacy)
    bad_records = {e.record for e in errors}
    drafts = []
    for trace_id, spans in traces.items():
        if any(number in bad_records for number, _, _ in spans):
            continue
        number = spans[0][0]
        try:
            draft = _trace(trace_id, spans)
        except FieldError as exc:
            errors.append(field_error(exc, name, number, privacy))
            continue
        if draft is not None:
            drafts.append(draft)
    return drafts, errors


def _trace(trace_id: str, spans: list[tuple[int, str, dict]]) -> Draft | None:
    ids = {span["spanId"] for _, _, span in spans}
    calls: list[ChatCall] = []
    runs: list[ToolRun] = []
    evaluations: list[Outcome] = []
    root = None
    genai = False
    for number, path, span in spans:
        try:
            attrs = attributes(span.get("attributes"), f"{path}.attributes")
            start = parse_nanos(span.get("startTimeUnixNano", 0), f"{path}.startTimeUnixNano")
            parent = span.get("parentSpanId") or ""
            if not isinstance(parent, str):
                raise FieldError(f"{path}.parentSpanId", "expected a hex span id", parent)
            if parent not in ids and (root is None or start < root[1]):
                root = (span, start, attrs, path, number)
            operation = attrs.get("gen_ai.operation.name")
            for e, event in enumerate(need(span.get("events", []), f"{path}.events", list, "a list")):
                need(event, f"{path}.events[{e}]", dict, "an event object")
                if event.get("name") == "gen_ai.evaluation.result":
                    evaluations.append(
                        _evaluation(attributes(event.get("attributes"), f"{path}.events[{e}].attributes"))
                    )
            if operation is None:
                continue
            genai = True
            if operation in CHAT_OPERATIONS:
                calls.append(_chat_call(attrs, start.timestamp(), f"{path}.attributes"))
            elif operation == "execute_tool":
                runs.append(_tool_run(span, attrs, start.timestamp(), path))
        except FieldError as exc:
            exc.number = number
            raise
    if not genai or root is None:
        return None
    span, start, attrs, path, number = root
    failed, message = _status(span, path)
    if evaluations:
        failing = [o for o in evaluations if not o.success]
        outcome = failing[0] if failing else evaluations[0]
        outcome.text = "; ".join(o.text for o in (failing or evaluations))
    else:
        text = f"root span status ERROR: {message}" if failed else "root span status OK"
        outcome = Outcome(not failed, float(not failed), text, "otel:root span status")
    prompts = [m for c in sorted(calls, key=lambda c: c.start) for m in c.prompt]
    agent = attrs.get("gen_ai.agent.name")
    category = agent if isinstance(agent, str) and agent else str(span.get("name") or "genai")
    fields = trace_fields(FORMAT, "ot", trace_id, category, first_user_text(prompts), calls, runs, start, "otel-genai")
    return Draft(number, trace_id, fields, outcome)


def _chat_call(attrs: dict, start: float, path: str) -> ChatCall:
    prompt: list[Message] = []
    if attrs.get("gen_ai.system_instructions") is not None:
        raw = _structured(attrs["gen_ai.system_instructions"], f"{path}.gen_ai.system_instructions")
        need(raw, f"{path}.gen_ai.system_instructions", list, "a list of parts")
        texts = [p.get("content", "") for p in raw if isinstance(p, dict) and p.get("type") == "text"]
        prompt.append(Message(role="system", content="\n".join(str(t) for t in texts)))
    if attrs.get("gen_ai.input.messages") is not None:
        prompt += parts_messages(attrs["gen_ai.input.messages"], f"{path}.gen_ai.input.messages")
    reply = Message(role="assistant")
    if attrs.get("gen_ai.output.messages") is not None:
        outputs = parts_messages(attrs["gen_ai.output.messages"], f"{path}.gen_ai.output.messages")
        reply = next((m for m in outputs if m.role == "assistant"), reply)
    tools = []
    if attrs.get("gen_ai.tool.definitions") is not None:
        tools = _tool_definitions(attrs["gen_ai.tool.definitions"], f"{path}.gen_ai.tool.definitions")
    tokens = []
    for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
        value = attrs.get(key, 0)
        tokens.append(max(int(need(value, f"{path}.{key}", int, "a token count")), 0))
    model = str(attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or "")
    return ChatCall(prompt, reply, start, tokens[0], tokens[1], tools, model)


def _tool_run(span: dict, attrs: dict, start: float, path: str) -> ToolRun:
    apath = f"{path}.attributes"
    name = attrs.get("gen_ai.tool.name")
    if not isinstance(name, str) or not name:
        raise FieldError(f"{apath}.gen_ai.tool.name", "expected the tool's name (a non-empty string)", name)
    call_id = attrs.get("gen_ai.tool.call.id", "")
    if not isinstance(call_id, str):
        raise FieldError(f"{apath}.gen_ai.tool.call.id", "expected a string", call_id)
    arguments = as_json_text(attrs.get("gen_ai.tool.call.arguments"), f"{apath}.gen_ai.tool.call.arguments")
    failed, message = _status(span, path)
    result = attrs.get("gen_ai.tool.call.result")
    text = as_text(result) if result is not None else (f"error: {message}" if failed else "")
    return ToolRun(name, arguments, text, call_id, start)
