"""The agent's prompt: one template for base, teacher and student.

The teacher's prompt differs from the student's ONLY by the retrieved-hints block in the
system message, which is delimited so it can be removed and its removal verified
(the student prompt must be byte-identical to what the base agent sees at inference).
"""

from __future__ import annotations

from r2w.contracts import Hint, Message
from r2w.tool_calls import as_text_messages, render_tools_block

PROMPT_VERSION = "agent-v1"

SYSTEM = (
    "You are an agent playing a text game. Read the task and the observation, "
    "then reply with exactly one action copied from the list of valid actions."
)
# Free-text variant for tasks with no valid actions (reasoning_gym): one question, one answer.
SYSTEM_ANSWER = "You solve problems. Reply with only the final answer, nothing else."
# Tool-calling chat tasks: this, then the task's tools (r2w/tool_calls.py), then the hints block.
SYSTEM_CHAT = (
    "You are an assistant that completes the user's request. Call the tools you need with the exact "
    "arguments the request gives; when the request is done, reply with a short answer and no tool call."
)
BASE_SYSTEMS = (SYSTEM, SYSTEM_ANSWER)


def is_base_system(text: str | None) -> bool:
    """Whether a (de-hinted) system message is one the base agent uses: a text-game, answer or chat prompt."""
    return text is not None and (text in BASE_SYSTEMS or text.startswith(SYSTEM_CHAT))


def is_chat_system(text: str | None) -> bool:
    """Whether a (de-hinted) system message is the tool-calling chat prompt (whole conversations, not one action)."""
    return text is not None and text.startswith(SYSTEM_CHAT)


HINTS_OPEN = "\n\n### Hints from past attempts\n"
HINTS_CLOSE = "\n### End of hints"


def render_hints_block(hints: list[Hint]) -> str:
    """The delimited block inserted into the teacher's system prompt (empty when no hints)."""
    if not hints:
        return ""
    lines = "\n".join(f"- {h.applicability.rstrip('.')}: {h.text}" for h in hints)
    return f"{HINTS_OPEN}{lines}{HINTS_CLOSE}"


def build_messages(
    task: str,
    observation: str,
    valid_actions: list[str],
    history: list[tuple[str, str]],
    hints_block: str = "",
) -> list[Message]:
    """Chat messages for one decision; `history` is [(action, observation), ...], most recent last.

    With no valid actions the reply is a free-text answer: the question is shown once (task and
    observation are the same text for single-step tasks) under the answer-only system prompt.
    """
    past = "\n".join(f"> {action}\n{obs}" for action, obs in history)
    if not valid_actions:
        user = (
            f"Question: {task}\n"
            + (f"Recent steps:\n{past}\n" if past else "")
            + (f"Observation: {observation}\n" if observation.strip() != task.strip() else "")
            + "Answer:"
        )
        return [Message(role="system", content=SYSTEM_ANSWER + hints_block), Message(role="user", content=user)]
    user = (
        f"Task: {task}\n"
        + (f"Recent steps:\n{past}\n" if past else "")
        + f"Observation: {observation}\n"
        + f"Valid actions: {', '.join(valid_actions)}\n"
        + "Next action:"
    )
    return [Message(role="system", content=SYSTEM + hints_block), Message(role="user", content=user)]


def build_chat_messages(
    conversation: list[Message], tools: list[dict], hints_block: str = "", native: bool = False
) -> list[Message]:
    """The prompt for the next assistant turn of a tool-calling task: r2w's system prompt with the tools
    and the hints block, then the task's own messages (its system message, if any, joins r2w's).

    `native` (the model's chat template renders tools, r2w/tool_calls.py): the tools are left out of the system
    message (the backend passes them to the template) and tool calls and results keep their structure.
    """
    own_system = "\n\n".join(m.content for m in conversation if m.role == "system")
    tools_block = "" if native else render_tools_block(tools)
    system = SYSTEM_CHAT + (f"\n\n{own_system}" if own_system else "") + tools_block + hints_block
    rest = [m for m in conversation if m.role != "system"]
    return [Message(role="system", content=system), *(rest if native else as_text_messages(rest))]


def as_text_fallback(native_prompt: list[Message], tools: list[dict]) -> list[Message]:
    """A hint-free native prompt as the text fallback writes the same conversation (what a model without tool
    support sees): the tools block at the end of the system message, calls and results as text. Exact, because
    both are built by `build_chat_messages` from the same conversation."""
    if not native_prompt or native_prompt[0].role != "system" or HINTS_OPEN in native_prompt[0].content:
        raise ValueError("as_text_fallback: expected a hint-free prompt that starts with its system message")
    system = native_prompt[0].content + render_tools_block(tools)
    return [Message(role="system", content=system), *as_text_messages(native_prompt[1:])]


def strip_hints_block(messages: list[Message]) -> list[Message]:
    """Remove the hints block from a teacher prompt, leaving the exact student/base prompt."""
    out = []
    for m in messages:
        content = m.content
        start = content.find(HINTS_OPEN)
        if m.role == "system" and start >= 0:
            end = content.find(HINTS_CLOSE, start)
            if end < 0:
                raise ValueError("hints block opened but never closed: refusing to guess its extent")
            content = content[:start] + content[end + len(HINTS_CLOSE) :]
        out.append(m.model_copy(update={"content": content}))  # tool calls and tool ids kept (native tool prompts)
    return out


def extract_hints_block(messages: list[Message]) -> str:
    """The hints block exactly as it appears in a teacher prompt ('' when there is none)."""
    system = next((m.content for m in messages if m.role == "system"), "")
    start = system.find(HINTS_OPEN)
    if start < 0:
        return ""
    end = system.find(HINTS_CLOSE, start)
    return system[start : end + len(HINTS_CLOSE)]
