"""OpenAI chat JSONL: one conversation per record, as the Chat Completions API and its fine-tuning
files write it: `messages` (system/developer, user, assistant with `tool_calls`, tool with
`tool_call_id`), optional `tools` (function schemas). A call's `arguments` may be JSON text (the
API's shape) or an object; both are stored as JSON text.

Per record: `id` (or `custom_id`) names it for an --outcomes file; `created_at` (ISO 8601) or
`created` (Unix seconds) dates it; the outcome is `success` (true/false), else `label`
(pass/fail/correct/1/0 ...), else `score` (0 = failure), or the --outcomes file's entry for its id.
Optional `task`, `category`, `env`, `task_id`, `metadata` ({task, category, env, task_id}); the task
defaults to the first user message, the task id to `openai/<id>` (an environment that can restore a
task reads `task_id`: r2w/environment.py RestorableFactory). One step per assistant message.
"""

from __future__ import annotations

from r2w.importers.common import guarded
from r2w.importers.shapes import (
    Draft,
    FieldError,
    episode_id,
    first_user_text,
    need,
    openai_messages,
    openai_tools,
    opt,
    outcome_of,
    parse_time,
    steps_from_messages,
)

FORMAT = "openai"


def _convert(raw: object, number: int) -> list[Draft]:
    if not isinstance(raw, dict):
        raise FieldError("<record>", "expected a JSON object with `messages`", raw)
    if "messages" not in raw:
        raise FieldError("messages", "field required (the conversation)", None, show=False)
    messages = openai_messages(raw["messages"], "messages")
    if not any(m.role == "assistant" for m in messages):
        raise FieldError("messages", "no assistant message: nothing the agent did", None, show=False)
    tools = openai_tools(raw.get("tools"), "tools")
    meta = opt(raw, "metadata", "", dict, "an object", {})
    key = raw.get("id", raw.get("custom_id", meta.get("id")))
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise FieldError("id", "expected a string", key)
    key = str(key) if key is not None else f"record-{number}"
    if raw.get("created_at") is not None:
        created = parse_time(raw["created_at"], "created_at")
    elif raw.get("created") is not None:
        created = parse_time(raw["created"], "created")
    else:
        raise FieldError(
            "created_at",
            "field required (ISO 8601, or `created` in Unix seconds): --since/--until need it",
            None,
            show=False,
        )
    usage = opt(raw, "usage", "", dict, "an object", {})
    tokens = tuple(
        int(need(usage.get(k, 0), f"usage.{k}", int, "a token count")) for k in ("prompt_tokens", "completion_tokens")
    )
    text = {
        k: opt(raw, k, "", str, "a string") or opt(meta, k, "metadata", str, "a string")
        for k in ("task", "category", "env", "task_id")
    }
    fields = dict(
        episode_id=episode_id("oa", key),
        env=text["env"] or "openai-chat",
        category=text["category"] or "chat",
        task_id=text["task_id"] or f"openai/{key}",
        split="train",
        seed=0,
        task=text["task"] or first_user_text(messages),
        steps=steps_from_messages(messages, tokens),
        tools=tools,
        policy="openai-chat",
        model=opt(raw, "model", "", str, "a string", ""),
        created_at=created,
        source=FORMAT,
    )
    return [Draft(number, key, fields, outcome_of(raw, "", FORMAT))]


convert = guarded(_convert)
