"""Tool calls: how tools and calls reach the model's prompt, and how a reply is parsed back.

Two paths, chosen per tokenizer by `tool_format` (recorded on every chat episode as `Episode.tool_format`):

- Native (`TEMPLATE_HERMES`): the model's own chat template renders the tools. The prompt is
  `apply_chat_template(messages, tools=tools, add_generation_prompt=True)`; assistant turns keep their structured
  `tool_calls` (arguments as JSON objects, as transformers' templates expect) and tool results stay `role: tool`
  messages with their `tool_call_id`, all rendered by the template. r2w's system prompt and the hints block stay in
  the system message, so hint stripping and the leak checks see them as before. Taken only when the template both
  renders tools (a one-message probe with one probe tool must show the tool's name: `apply_chat_template` drops
  `tools` silently when a template ignores them) and writes calls as `<tool_call>{json}</tool_call>` (the Hermes
  format of Qwen2/2.5/3, Hermes and many fine-tunes: the template text contains `<tool_call>`). Replies are then
  parsed by `parse_reply` below, the same parser as the fallback's. A template that renders tools in another call
  format (Llama 3.1 JSON, Mistral `[TOOL_CALLS]`) is NOT parsed here: it gets the fallback, with a log line.
- Fallback (`TEXT_FALLBACK`, the empty string; SmolLM2-135M-Instruct and the tiny test model, whose templates have
  no tool support): r2w writes the tools itself, byte-for-byte as before native tools existed, so caches, datasets
  and results made before stay valid. What goes where: the tool schemas (one JSON object per line, keys sorted)
  inside `<tools>...</tools>` after an instruction to reply with `<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>`, appended to the system message (`render_tools_block`) before the hints block; each earlier
  assistant turn as its text followed by one `<tool_call>` block per call (`render_turn`); each tool result as a
  `user` message `<tool_response name=NAME>\nRESULT\n</tool_response>` (`as_text_messages`). Why: those templates
  know only role + content, and transformers' `parse_response` needs a `response_template` these tokenizers do not
  ship.

- Server API (`API_TOOLS`; an OpenAI-compatible server with `models.teacher_tools: native`): the tools go in the
  request's `tools` field and the server's own parser returns `tool_calls` (vLLM with `--enable-auto-tool-choice
  --tool-call-parser ...`). The conversation keeps its structure as on the template path (the server renders it with
  the model's template); `api_reply_text` writes the returned calls back as `<tool_call>` blocks, so one parser reads
  every path and the datasets look the same whoever produced them.

Decoding the JSON inside each block is the `json` module's job; a reply that does not parse is recorded as
malformed (with the reason), scored as a failure by the environment, and never crashes a run.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from r2w.contracts import Message, ToolCall, ToolFunction

log = logging.getLogger(__name__)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)

TEXT_FALLBACK = ""  # r2w writes tools and calls as text (also what every episode from before native tools used)
TEMPLATE_HERMES = "template:hermes"  # the model's chat template renders the tools; calls are <tool_call> blocks
API_TOOLS = "api:openai"  # an OpenAI-compatible server takes `tools` and returns parsed `tool_calls`
PROBE_NAME = "r2w_probe_tool_3f9c"
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": PROBE_NAME,
        "description": "Probe: does the chat template render tools?",
        "parameters": {"type": "object", "properties": {}},
    },
}
_FORMATS: dict[str, str] = {}  # chat template text -> its tool format (the template alone decides it)


def renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template shows tools passed as `apply_chat_template(tools=...)`."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=[PROBE_TOOL], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # noqa: BLE001 - a template that rejects tools (jinja errors, TypeError, ValueError) has none
        return False
    return isinstance(text, str) and PROBE_NAME in text


def tool_format(tokenizer: Any) -> str:
    """TEMPLATE_HERMES when the tokenizer's own template renders tools and writes `<tool_call>` blocks, else
    TEXT_FALLBACK. Cached by the template's text, so a tokenizer whose template is replaced is probed again."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return TEXT_FALLBACK
    key = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    if key not in _FORMATS:
        fmt = TEXT_FALLBACK
        if renders_tools(tokenizer):
            if CALL_OPEN in key:
                fmt = TEMPLATE_HERMES
            else:
                log.info(
                    "the chat template renders tools, but not as %s blocks: r2w's text fallback is used", CALL_OPEN
                )
        _FORMATS[key] = fmt
    return _FORMATS[key]


def template_messages(messages: list[Message]) -> list[dict]:
    """Messages as chat templates read them: OpenAI's shape, with each call's JSON-text arguments as an object
    (transformers' tool-use convention; Qwen-style templates `tojson` them). Messages without calls dump as before."""
    out = []
    for m in messages:
        data = m.model_dump()
        for call in data.get("tool_calls", []):
            try:
                arguments = json.loads(call["function"].get("arguments") or "{}")
            except json.JSONDecodeError:
                continue  # an imported malformed call is shown as it was
            if isinstance(arguments, dict):
                call["function"]["arguments"] = arguments
        out.append(data)
    return out


def render_tools_block(tools: list[dict]) -> str:
    """The tools as the system prompt shows them (empty when there are none)."""
    if not tools:
        return ""
    schemas = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False, sort_keys=True) for t in tools)
    return (
        "\n\nYou may call these tools. For each call, reply with "
        f'{CALL_OPEN}{{"name": <tool name>, "arguments": {{...}}}}{CALL_CLOSE}.\n<tools>\n{schemas}\n</tools>'
    )


def render_call(call: ToolCall) -> str:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.function.arguments  # an imported malformed call is shown as it was
    return (
        f"{CALL_OPEN}{json.dumps({'name': call.function.name, 'arguments': arguments}, ensure_ascii=False)}{CALL_CLOSE}"
    )


def render_turn(turn: Message) -> str:
    """An assistant turn as the text the model writes: its content, then one block per call."""
    parts = [turn.content.strip()] if turn.content.strip() else []
    return "\n".join(parts + [render_call(c) for c in turn.tool_calls])


def as_text_messages(messages: list[Message]) -> list[Message]:
    """A conversation with tool calls and tool results as plain text messages any chat template renders."""
    out = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            out.append(Message(role="assistant", content=render_turn(m)))
        elif m.role == "tool":
            out.append(
                Message(role="user", content=f"<tool_response name={m.name or ''}>\n{m.content}\n</tool_response>")
            )
        else:
            out.append(Message(role=m.role, content=m.content))
    return out


def api_reply_text(message: dict) -> str:
    """An OpenAI chat-completions reply message as the text the model wrote: its content, then one `<tool_call>`
    block per server-parsed call. Arguments that are not JSON stay as they came, so the block parses as a
    malformed call (counted, never a crash) instead of being silently repaired."""
    content = (message.get("content") or "").strip()
    blocks = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        name = json.dumps(function.get("name") or "", ensure_ascii=False)
        raw = function.get("arguments")
        if not isinstance(raw, str):  # some servers send an object
            raw = json.dumps(raw if raw is not None else {}, ensure_ascii=False)
        try:
            arguments = json.dumps(json.loads(raw or "{}"), ensure_ascii=False)
        except json.JSONDecodeError:
            arguments = raw
        blocks.append(f'{CALL_OPEN}{{"name": {name}, "arguments": {arguments}}}{CALL_CLOSE}')
    return "\n".join(([content] if content else []) + blocks)


@dataclass
class ParsedTurn:
    content: str
    calls: list[ToolCall] = field(default_factory=list)
    error: str = ""  # why a call block did not parse ('' = fine)


def parse_tool_calls(text: str, turn_index: int = 0) -> ParsedTurn:
    """The reply's text outside call blocks, its calls (ids call_<turn>_<i>), and the first parse error."""
    calls, errors = [], []
    for i, block in enumerate(_BLOCK.findall(text)):
        try:
            payload = json.loads(block.strip())
            if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or not payload["name"]:
                raise ValueError('expected {"name": <non-empty string>, "arguments": {...}}')
            arguments = payload.get("arguments", {})
            if isinstance(arguments, str):
                arguments = json.loads(arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError(f"arguments: expected an object, got {type(arguments).__name__}")
        except (json.JSONDecodeError, ValueError) as exc:
            errors.append(f"tool call {i}: {exc}")
            continue
        function = ToolFunction(name=payload["name"], arguments=json.dumps(arguments, ensure_ascii=False))
        calls.append(ToolCall(id=f"call_{turn_index}_{i}", function=function))
    if CALL_OPEN in text and not calls and not errors:
        errors.append(f"tool call: {CALL_OPEN} without a matching {CALL_CLOSE}")
    content = _BLOCK.sub("", text).replace(CALL_OPEN, "").strip()
    return ParsedTurn(content=content, calls=calls, error="; ".join(errors))


ANSWER_KEY = "answer"


def reply_schema(tools: list[dict], parallel: bool = False) -> dict:
    """A JSON schema for one reply: a call of one of the tools (name + its parameters) or a final answer; with
    `parallel` (`agent.parallel_tool_calls`, OpenAI's `parallel_tool_calls`) also a JSON array of such calls, for
    tasks that need several calls in one turn.

    Backends that constrain decoding to a schema (vLLM structured outputs) then never produce a
    malformed call; the reply is `{"name": ..., "arguments": {...}}`, `{"answer": "..."}` or `[{call}, ...]`.
    """
    options = []
    for tool in tools:
        fn = tool.get("function", tool)
        parameters = fn.get("parameters") or {"type": "object"}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    answer = {"type": "object", "properties": {ANSWER_KEY: {"type": "string"}}, "required": [ANSWER_KEY]}
    several = [{"type": "array", "items": {"anyOf": options}, "minItems": 1}] if parallel and options else []
    return {"anyOf": [*options, answer, *several]}


def parse_reply(text: str, turn_index: int = 0) -> ParsedTurn:
    """A reply in any form: `<tool_call>` blocks (free decoding), one schema-constrained JSON object, or a JSON
    array of call objects (`reply_schema(..., parallel=True)`)."""
    stripped = text.strip()
    if CALL_OPEN not in stripped and stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list) and items:
            blocks = [json.dumps(item, ensure_ascii=False) if not isinstance(item, str) else item for item in items]
            return parse_tool_calls("".join(f"{CALL_OPEN}{b}{CALL_CLOSE}" for b in blocks), turn_index)
    if CALL_OPEN not in stripped and stripped.startswith("{"):
        try:
            payload = json.loads(stripped)
        except json.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and ANSWER_KEY in payload and "name" not in payload:
            return ParsedTurn(content=str(payload[ANSWER_KEY]))
        if isinstance(payload, dict):
            return parse_tool_calls(f"{CALL_OPEN}{stripped}{CALL_CLOSE}", turn_index)
    return parse_tool_calls(text, turn_index)
