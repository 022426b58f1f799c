"""Tool calls as text: how tools and calls are written into a prompt, and how a reply is parsed back.

The format is the widely used Hermes/Qwen one: tool schemas inside `<tools>...</tools>` in the system
prompt, and each call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the reply.
Why r2w writes it itself: SmolLM2-135M-Instruct's chat template (and the tiny test model's) has no
tool support, so `apply_chat_template(tools=...)` would silently drop the tools; and transformers'
`parse_response` needs a `response_template` that these tokenizers do not ship. Decoding the JSON
inside each block is the `json` module's job; a reply that does not parse is recorded as malformed
(with the reason), scored as a failure by the environment, and never crashes a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from r2w.contracts import Message, ToolCall, ToolFunction

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


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


def reply_schema(tools: list[dict]) -> dict:
    """A JSON schema for one reply: a call of one of the tools (name + its parameters) or a final answer.

    Backends that constrain decoding to a schema (vLLM structured outputs) then never produce a
    malformed call; the reply is `{"name": ..., "arguments": {...}}` or `{"answer": "..."}`.
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
    return {"anyOf": [*options, answer]}


def parse_reply(text: str, turn_index: int = 0) -> ParsedTurn:
    """A reply in either form: `<tool_call>` blocks (free decoding) or one schema-constrained JSON object."""
    stripped = text.strip()
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
