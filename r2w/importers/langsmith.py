"""LangSmith run exports: runs as the API returns them (`id, name, run_type, start_time, inputs,
outputs, error, parent_run_id, trace_id, dotted_order`), one per record (JSONL or a JSON array), with
feedback either inline on a run (`feedback: [{key, score, value, comment}]`) or as its own records
(`{run_id, key, score ...}`).

Runs are grouped by `trace_id` (else the first `dotted_order` segment, else the parent chain) and
ordered by `dotted_order`. `llm` runs are model calls: `inputs.messages` (OpenAI or LangChain messages;
a batch `[[...]]` takes the first) is the prompt, `outputs` (`{choices: [{message}]}`, LangChain
`{generations: [[{message}]]}`, a message) the reply, `inputs.tools` or
`extra.invocation_params.tools` the tools. `tool` runs are tool runs (run name = tool, inputs =
arguments, outputs (`{output: ...}` unwrapped) or `error` = result). The root run's inputs are the
task. Outcome: a failing feedback score/value (0, false, "fail" ...), else the root's `error`.
"""

from __future__ import annotations

from r2w.importers.common import field_error, guarded
from r2w.importers.shapes import (
    ChatCall,
    Draft,
    FieldError,
    Outcome,
    ToolRun,
    as_json_text,
    as_text,
    is_failing_value,
    need,
    openai_messages,
    openai_tools,
    parse_time,
    reply_message,
    task_text,
    trace_fields,
)

FORMAT = "langsmith"


def convert(name: str, records: list[tuple[int, object]], privacy=None):
    runs: dict[str, tuple[int, dict]] = {}
    feedback: list[tuple[int, dict]] = []

    def collect(raw: object, number: int) -> list[Draft]:
        need(raw, "<record>", dict, "a LangSmith run or feedback object")
        if "run_type" not in raw and "run_id" in raw and "key" in raw:
            need(raw["run_id"], "run_id", str, "the run's id (a string)")
            need(raw["key"], "key", str, "a string")
            feedback.append((number, raw))
            return []
        run_id = need(raw.get("id"), "id", str, "the run's id (a string)")
        need(raw.get("run_type"), "run_type", str, "llm, tool, chain, retriever ...")
        need(raw.get("name", ""), "name", str, "a string")
        for key in ("parent_run_id", "trace_id", "dotted_order", "error"):
            if raw.get(key) is not None:
                need(raw[key], key, str, "a string")
        parse_time(raw.get("start_time"), "start_time")
        for i, fb in enumerate(need(raw.get("feedback") or [], "feedback", list, "a list of feedback")):
            need(fb, f"feedback[{i}]", dict, "a feedback object {key, score}")
            need(fb.get("key"), f"feedback[{i}].key", str, "a string")
            feedback.append((number, {**fb, "run_id": run_id}))
        if run_id in runs:
            raise FieldError("id", f"duplicate of record {runs[run_id][0]}", run_id)
        runs[run_id] = (number, raw)
        return []

    _, errors = guarded(collect)(name, records, privacy)
    for number, fb in feedback:
        if fb["run_id"] not in runs:
            errors.append(
                field_error(FieldError("run_id", "no run with this id in the file", fb["run_id"]), name, number)
            )
    groups: dict[str, list[tuple[int, dict]]] = {}
    for run_id, (number, run) in runs.items():
        groups.setdefault(_trace_of(run_id, runs), []).append((number, run))
    bad = {e.record for e in errors}
    drafts = []
    for trace_id, members in groups.items():
        if any(n in bad for n, _ in members):
            continue
        members.sort(key=lambda m: (m[1].get("dotted_order") or "", str(m[1].get("start_time"))))
        try:
            drafts.append(_trace(trace_id, members, [fb for _, fb in feedback]))
        except FieldError as exc:
            errors.append(field_error(exc, name, exc.number or members[0][0], privacy))
    return drafts, errors


def _trace_of(run_id: str, runs: dict) -> str:
    run = runs[run_id][1]
    if run.get("trace_id"):
        return run["trace_id"]
    if run.get("dotted_order"):
        return run["dotted_order"].split(".")[0][-36:]
    seen = set()
    while run.get("parent_run_id") in runs and run_id not in seen:
        seen.add(run_id)
        run_id = run["parent_run_id"]
        run = runs[run_id][1]
    return run_id


def _trace(trace_id: str, members: list[tuple[int, dict]], feedback: list[dict]) -> Draft:
    ids = {run["id"] for _, run in members}
    root_number, root = next(((n, r) for n, r in members if r.get("parent_run_id") not in ids), members[0])
    calls, runs = [], []
    for number, run in members:
        try:
            start = parse_time(run.get("start_time"), "start_time").timestamp()
            if run["run_type"] == "llm":
                calls.append(_llm_call(run, start))
            elif run["run_type"] == "tool":
                runs.append(_tool_run(run, start))
        except FieldError as exc:
            exc.number = number
            raise
    mine = [fb for fb in feedback if fb["run_id"] in ids]
    failing = [fb for fb in mine if is_failing_value(fb.get("score", fb.get("value")))]
    if failing:
        text = "; ".join(f"feedback {fb['key']}={fb.get('score', fb.get('value'))!r}" for fb in failing)
        comments = [fb["comment"] for fb in failing if isinstance(fb.get("comment"), str) and fb["comment"]]
        outcome = Outcome(False, 0.0, text + (f" ({'; '.join(comments)})" if comments else ""), "langsmith:feedback")
    elif root.get("error"):
        outcome = Outcome(False, 0.0, f"root run error: {root['error']}", "langsmith:root error")
    else:
        verdict = "langsmith:feedback" if mine else "langsmith:root error"
        outcome = Outcome(True, 1.0, "no failing feedback, no error", verdict)
    task = task_text(root.get("inputs"))
    created = parse_time(root.get("start_time"), "start_time")
    fields = trace_fields(FORMAT, "ls", trace_id, str(root.get("name") or "run"), task, calls, runs, created,
                          "langsmith-run")  # fmt: skip
    return Draft(root_number, trace_id, fields, outcome)


def _llm_call(run: dict, start: float) -> ChatCall:
    inputs = need(run.get("inputs") or {}, "inputs", dict, "an object")
    raw = inputs.get("messages", inputs.get("prompts"))
    if isinstance(raw, list) and raw and isinstance(raw[0], list):
        raw = raw[0]
    if isinstance(raw, list) and raw and isinstance(raw[0], str):  # a completion model's prompts
        prompt = openai_messages([{"role": "user", "content": raw[0]}], "inputs.prompts")
    else:
        prompt = openai_messages(raw if raw is not None else [], "inputs.messages")
    outputs = run.get("outputs")
    reply = reply_message(outputs, "outputs") if outputs else reply_message("", "outputs")
    extra = run.get("extra") if isinstance(run.get("extra"), dict) else {}
    params = extra.get("invocation_params") if isinstance(extra.get("invocation_params"), dict) else {}
    raw_tools = inputs.get("tools", params.get("tools"))
    tools = openai_tools(raw_tools, "inputs.tools" if "tools" in inputs else "extra.invocation_params.tools")
    usage = (outputs or {}).get("usage") if isinstance(outputs, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    tokens = [
        usage.get(k) if isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool) else 0
        for k in ("prompt_tokens", "completion_tokens")
    ]
    model = params.get("model") or (extra.get("metadata") or {}).get("ls_model_name") or ""
    return ChatCall(prompt, reply, start, tokens[0], tokens[1], tools, model if isinstance(model, str) else "")


def _tool_run(run: dict, start: float) -> ToolRun:
    name = need(run.get("name"), "name", str, "the tool's name")
    if not name:
        raise FieldError("name", "expected the tool's name (a non-empty string)", name)
    inputs = run.get("inputs")
    if isinstance(inputs, dict) and set(inputs) == {"input"} and isinstance(inputs["input"], str):
        arguments = inputs["input"] if inputs["input"].lstrip().startswith("{") else None
        arguments = as_json_text(arguments, "inputs.input") if arguments else as_json_text(inputs, "inputs")
    else:
        arguments = as_json_text(inputs if inputs is not None else {}, "inputs")
    outputs = run.get("outputs")
    if isinstance(outputs, dict) and set(outputs) == {"output"}:
        outputs = outputs["output"]
    result = as_text(outputs) if outputs is not None else f"error: {run.get('error') or ''}"
    return ToolRun(name, arguments, result, "", start)
