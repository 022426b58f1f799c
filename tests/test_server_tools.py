"""Tools sent natively to an OpenAI-compatible server (`models.teacher_tools`, issue 22 point 4).

The server is `FakeOpenAIServer` (tests/fake_openai.py), a real loopback HTTP server named a fake because no hosted
model can be reached from here. Its answers come from `desk_agent` below, a scripted help-desk agent (also a named
fake) that reads the conversation the way the server received it: structured on the native path, as text on the
fallback path. With `tool_parser=True` the fake returns parsed `tool_calls` as vLLM's hermes parser does.
"""

from __future__ import annotations

import json

import pytest

from evaluation.environments.examples.helpdesk import TOOLS, HelpDesk
from r2w.agent_prompt import render_hints_block
from r2w.backends import SamplingParams, agent_backends
from r2w.backends.openai_server import OpenAIServerBackend, ServerError
from r2w.config import load_config
from r2w.contracts import Message, Trajectory
from r2w.rollout import LLMPolicy, run_chat_episodes
from r2w.tool_calls import API_TOOLS, TEXT_FALLBACK, api_reply_text, parse_reply
from r2w.trainers import in_student_format
from r2w.training import load_tokenizer
from tasks.distill import build_examples
from tests.fake_openai import FakeOpenAIServer
from tests.test_native_tools import HINT, cfg, qwen_tokenizer


def _call(name: str, arguments: dict) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def desk_agent(messages: list[dict]) -> str:
    """Look the order up, refund its amount, then answer; tool results arrive as `tool` messages (native) or as
    `<tool_response>` user messages (text fallback)."""
    ask = next(m["content"] for m in messages if m["role"] == "user")
    if "refund order " not in ask:  # r2w's probe of the server
        return "ok"
    order = ask.split("refund order ")[1].split(" ")[0]
    results = [m["content"] for m in messages if m["role"] == "tool"]
    results += [m["content"].split("\n")[1] for m in messages if m["content"].startswith("<tool_response")]
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns == 0:
        return _call("lookup_order", {"order_id": order})
    if turns == 1:
        return "Refunding.\n" + _call("refund", {"order_id": order, "amount": json.loads(results[0])["amount"]})
    return "Refunded."


def play(backend: OpenAIServerBackend, n: int = 3):
    factory, block = HelpDesk(), render_hints_block([HINT])
    policy = LLMPolicy(backend, "teacher", SamplingParams(temperature=0.0, max_tokens=96), answer_max_tokens=96)
    tasks = [(t, 0) for t in factory.tasks("train", n)]
    return run_chat_episodes(factory, tasks, policy, 5, hints_for=lambda *_: ([HINT.hint_id], block))


def trajectories(episodes) -> list[Trajectory]:
    block = render_hints_block([HINT])
    return [
        Trajectory(trajectory_id=f"t-{e.task_id}", episode=e, hint_ids=[HINT.hint_id], hints_block=block)
        for e in episodes
    ]


@pytest.fixture
def parser_server():
    with FakeOpenAIServer(desk_agent, tool_parser=True) as fake:
        yield fake


def test_a_native_server_teacher_sends_tools_and_structured_turns(parser_server):
    backend = OpenAIServerBackend(parser_server.url, tools="native")
    episodes = play(backend)
    assert all(e.success and e.tool_format == API_TOOLS for e in episodes), [e.outcome for e in episodes]
    assert all(r.body["tools"] == TOOLS and r.body["tool_choice"] == "auto" for r in parser_server.requests)
    last = parser_server.requests[-1].body["messages"]  # the third turn's request holds the whole conversation
    assert "You may call these tools" not in last[0]["content"] and "<tool_call>" not in json.dumps(last)
    assistant, tool = last[2], last[3]
    assert isinstance(assistant["tool_calls"][0]["function"]["arguments"], str)
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"])["order_id"]
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert episodes[0].steps[1].tool_calls[0].function.name == "refund"


def test_native_server_episodes_teach_students_with_and_without_tool_templates(parser_server, tiny_model):
    """The server's structured conversations become the same training rows as the text path's for a student
    without tool support (rewritten exactly), and native rows for a student whose template renders tools."""
    native_eps = play(OpenAIServerBackend(parser_server.url, tools="native"))
    with FakeOpenAIServer(desk_agent) as text_server:
        text_eps = play(OpenAIServerBackend(text_server.url))
    assert all(e.success for e in text_eps) and {e.tool_format for e in text_eps} == {TEXT_FALLBACK}
    native, _ = build_examples(trajectories(native_eps), [HINT], cfg())
    text, _ = build_examples(trajectories(text_eps), [HINT], cfg())
    assert native and all(e.tools == TOOLS for e in native)
    converted = in_student_format(native, load_tokenizer(tiny_model))
    assert [(e.prompt, e.completion) for e in converted] == [(e.prompt, e.completion) for e in text]
    assert in_student_format(native, qwen_tokenizer(tiny_model)) == native  # a tool-template student keeps them


def test_auto_asks_the_server_once_and_keeps_text_where_tools_are_refused(parser_server):
    native = OpenAIServerBackend(parser_server.url, tools="auto")
    assert native.native_tools and native.tool_format == API_TOOLS and native.identity.endswith(":tools=native")
    assert parser_server.requests[-1].body["tools"][0]["function"]["name"].startswith("r2w_probe")
    with FakeOpenAIServer(desk_agent) as plain:
        text = OpenAIServerBackend(plain.url, tools="auto")
        assert not text.native_tools and text.tool_format == TEXT_FALLBACK
        assert text.identity == OpenAIServerBackend(plain.url).identity  # caches from before stay valid


def test_native_tools_on_a_server_without_a_tool_parser_say_how_to_fix_it():
    with FakeOpenAIServer(desk_agent) as plain:
        backend = OpenAIServerBackend(plain.url, tools="native", max_retries=0)
        with pytest.raises(ServerError, match="enable-auto-tool-choice.*\n.*models.teacher_tools"):
            play(backend, n=1)


def test_the_config_option_reaches_the_teacher(parser_server):
    cfg_ = load_config("test", {"models.teacher_url": parser_server.url, "models.teacher_tools": "native"})
    backends = agent_backends(cfg_)
    try:
        assert backends.teacher.native_tools and backends.teacher.recipe.server_tools == "native"
        assert not getattr(backends.base, "tool_format", None)  # the base keeps its own (template) detection
    finally:
        backends.teacher.close()


@pytest.mark.parametrize(
    ("message", "calls", "error"),
    [
        ({"content": "ok", "tool_calls": None}, [], ""),
        ({"content": None, "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}, ["f"], ""),
        ({"content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}, ["f"], ""),
        ({"content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}, [], "tool call 0"),
        ({"tool_calls": [{"function": {"name": "", "arguments": "{}"}}]}, [], "non-empty string"),
    ],
)
def test_server_parsed_calls_read_back_as_one_parser_reads_them(message, calls, error):
    """Whatever a server returns becomes a parsed turn or a counted malformed call, never a crash."""
    parsed = parse_reply(api_reply_text(message))
    assert [c.function.name for c in parsed.calls] == calls
    assert (error in parsed.error) if error else not parsed.error
    if calls:
        assert json.loads(parsed.calls[0].function.arguments) == {"a": 1}


def test_a_text_backend_refuses_structured_tools(parser_server):
    backend = OpenAIServerBackend(parser_server.url)
    with pytest.raises(ValueError, match="teacher_tools: text"):
        backend.generate([[Message(role="user", content="hi")]], SamplingParams(max_tokens=4), tools=[TOOLS])
