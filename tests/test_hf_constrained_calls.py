"""Schema-constrained tool calls on the transformers backend (xgrammar's logits processor): even the random
tiny model's replies are JSON that validates against the tools' schema."""

from __future__ import annotations

import json

import jsonschema

from r2w.agent_prompt import build_chat_messages
from r2w.backends.base import SamplingParams
from r2w.contracts import Message
from r2w.rollout import LLMPolicy, run_chat_episodes
from r2w.tool_calls import parse_reply, reply_schema

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "forecast",
            "parameters": {
                "type": "object",
                "properties": {
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                    "hourly": {"type": "boolean"},
                },
                "required": ["unit", "days"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]


def test_every_sampled_reply_is_a_schema_valid_call(tiny_backend):
    calls_only = {"anyOf": reply_schema(TOOLS)["anyOf"][:-1]}  # no free-text answer: a call is the only way out
    prompt = build_chat_messages([Message(role="user", content="Weather for 3 days in celsius?")], TOOLS)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=160, seed=0)
    (out,) = tiny_backend.generate([prompt], params, schemas=[json.dumps(calls_only)])
    free = tiny_backend.generate([prompt], SamplingParams(n=1, temperature=1.0, max_tokens=40, seed=0))[0].texts[0]
    assert parse_reply(free).calls == []  # unconstrained, the random model writes no call at all
    assert len(out.texts) == 4
    for text in out.texts:
        jsonschema.validate(json.loads(text), calls_only)
        parsed = parse_reply(text)
        assert parsed.error == "" and len(parsed.calls) == 1 and parsed.calls[0].function.name in {"forecast", "now"}


def test_the_agent_constrains_its_turns_on_the_transformers_backend(tiny_backend):
    """agent.constrain_tool_calls through the rollout: each turn is one JSON reply (a call or an answer)."""
    from evaluation.environments.examples.helpdesk import HelpDesk

    assert tiny_backend.constrains_json
    policy = LLMPolicy(tiny_backend, "base", SamplingParams(temperature=0.0, max_tokens=120), answer_max_tokens=120)
    factory = HelpDesk()
    episodes = run_chat_episodes(factory, [(t, 0) for t in factory.tasks("test", 3)], policy, max_steps=2)
    steps = [(e, s) for e in episodes for s in e.steps]
    assert steps and all(s.response.startswith("{") for _, s in steps)  # the free random model never writes "{"
    finished = [(e, s) for e, s in steps if s.completion_tokens < 120]
    assert finished  # replies that ended: valid JSON of the reply schema, never a malformed call
    for episode, step in finished:
        jsonschema.validate(json.loads(step.response), reply_schema(episode.tools))
        assert step.malformed_tool_call == ""


def test_parallel_replies_are_arrays_of_schema_valid_calls(tiny_backend):
    """agent.parallel_tool_calls: the schema also admits an array of calls, and such a reply parses as every call
    in it (BFCL's parallel categories need several calls in one turn; the one-call schema made them unreachable)."""
    several = {"anyOf": reply_schema(TOOLS, parallel=True)["anyOf"][-1:]}  # only the array: it must be taken
    assert reply_schema(TOOLS)["anyOf"] == reply_schema(TOOLS, parallel=True)["anyOf"][:-1]  # off: as before
    prompt = build_chat_messages([Message(role="user", content="Weather for 3 days, and the time?")], TOOLS)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=200, seed=0)
    (out,) = tiny_backend.generate([prompt], params, schemas=[json.dumps(several)])
    finished = [t for t in out.texts if t.rstrip().endswith("]")]
    assert finished
    for text in finished:
        items = json.loads(text)
        jsonschema.validate(items, several)
        parsed = parse_reply(text, turn_index=2)
        assert parsed.error == "" and [c.function.name for c in parsed.calls] == [i["name"] for i in items]
        assert [c.id for c in parsed.calls] == [f"call_2_{i}" for i in range(len(items))]
        assert [json.loads(c.function.arguments) for c in parsed.calls] == [i["arguments"] for i in items]


def test_an_array_reply_with_a_bad_item_is_a_counted_malformed_call():
    parsed = parse_reply('[{"name": "now", "arguments": {}}, {"arguments": {}}]')
    assert [c.function.name for c in parsed.calls] == ["now"] and "tool call 1" in parsed.error
    assert parse_reply("[1, 2").calls == [] and parse_reply("[]").calls == []
