"""BFCL through the chat seam, on BFCL's real data and its own AST checker (bfcl-eval, installed --no-deps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from evaluation.environments import make_environment
from evaluation.environments.bfcl import (
    SINGLE_TURN_CATEGORIES,
    BFCLFactory,
    check,
    gold_turn,
    load_category,
    to_openai_tools,
)
from r2w.config import EnvConfig
from r2w.contracts import Message, ToolCall, ToolFunction
from r2w.environment import ChatEnvironmentFactory, TaskSpec

TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
JSON_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}


def _play(factory: BFCLFactory, task: TaskSpec, turn: Message):
    env = factory.make()
    try:
        start = env.reset(task)
        return start, env.step(turn)
    finally:
        env.close()


def _call(name: str, arguments: str, i: int = 0) -> ToolCall:
    return ToolCall(id=f"call_{i}", function=ToolFunction(name=name, arguments=arguments))


def _turn(*calls: ToolCall) -> Message:
    return Message(role="assistant", content="", tool_calls=list(calls))


@pytest.mark.parametrize("category", SINGLE_TURN_CATEGORIES)
def test_gold_answer_scores_success_on_every_task(category):
    """The ground truth, as an OpenAI tool-call turn, passes BFCL's checker on all tasks of the category."""
    failures = [e.id for e in load_category(category) if not check(e, category, gold_turn(e))["valid"]]
    assert failures == []


@pytest.mark.parametrize("category", SINGLE_TURN_CATEGORIES)
def test_episode_through_the_seam(category):
    factory = BFCLFactory(category)
    assert isinstance(factory, ChatEnvironmentFactory) and factory.kind == "chat" and factory.name == "bfcl"
    task = factory.tasks("test", 1)[0]
    assert task.env == "bfcl" and task.category == category and task.name.startswith(category + "_")
    env = factory.make()
    try:
        start = env.reset(task)
        assert start.messages and start.messages[0].role == "user" and start.messages[0].content
        assert start.tools
        result = env.step(env.gold_turn())
        assert result.done and result.success and result.score == 1.0
        assert result.messages and result.messages[0].role == "user"
        with pytest.raises(RuntimeError):
            env.step(env.gold_turn())  # single-turn: the first turn ends the episode
    finally:
        env.close()


def _simple_python_0():
    factory = BFCLFactory("simple_python")
    task = TaskSpec(env="bfcl", category="simple_python", split="?", seed=0, name="simple_python_0")
    return factory, task  # gold: calculate_triangle_area(base=10, height=5)


def test_wrong_function_name_fails():
    factory, task = _simple_python_0()
    _, result = _play(factory, task, _turn(_call("calculate_circle_area", '{"base": 10, "height": 5}')))
    assert result.done and not result.success and result.score == 0.0
    assert "wrong_func_name" in result.messages[0].content


def test_wrong_argument_value_fails_and_right_one_passes():
    factory, task = _simple_python_0()
    _, bad = _play(factory, task, _turn(_call("calculate_triangle_area", '{"base": 10, "height": 6}')))
    assert not bad.success and "value_error" in bad.messages[0].content
    _, good = _play(factory, task, _turn(_call("calculate_triangle_area", '{"base": 10, "height": 5}')))
    assert good.success and good.score == 1.0


@pytest.mark.parametrize(
    "turn",
    [
        _turn(_call("calculate_triangle_area", '{"base": 10, "height": ')),  # truncated JSON
        _turn(_call("calculate_triangle_area", "[10, 5]")),  # JSON, but not an object
        _turn(_call("calculate_triangle_area", '{"base": {"x": [1]}, "height": 5}')),  # odd value type
        Message(role="assistant", content="The area is 25."),  # no call at all
    ],
    ids=["bad_json", "not_an_object", "odd_value", "no_calls"],
)
def test_malformed_turn_is_a_failure_not_a_crash(turn):
    factory, task = _simple_python_0()
    _, result = _play(factory, task, turn)
    assert result.done and not result.success and result.score == 0.0


def test_parallel_needs_every_call():
    factory = BFCLFactory("parallel")
    entry = load_category("parallel")[0]
    task = TaskSpec(env="bfcl", category="parallel", split="?", seed=0, name=entry.id)
    gold = gold_turn(entry)
    assert len(gold.tool_calls) > 1
    _, partial = _play(factory, task, _turn(*gold.tool_calls[:-1]))
    assert not partial.success
    _, reordered = _play(factory, task, _turn(*reversed(gold.tool_calls)))
    assert reordered.success  # BFCL's parallel checker ignores order


@pytest.mark.parametrize("category", SINGLE_TURN_CATEGORIES)
def test_splits_never_overlap_cover_everything_and_are_stable(category):
    factory = BFCLFactory(category)
    train = [t.name for t in factory.tasks("train", len(factory.split_entries("train")))]
    test = [t.name for t in factory.tasks("test", len(factory.split_entries("test")))]
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(e.id for e in load_category(category))
    assert 0.35 < len(test) / (len(train) + len(test)) < 0.65  # test_fraction 0.5
    again = BFCLFactory(category)
    assert [t.name for t in again.tasks("test", 5, offset=3)] == test[3:8]
    assert [t.seed for t in factory.tasks("train", 3)] == sorted(t.seed for t in factory.tasks("train", 3))


def test_split_membership_depends_only_on_the_id():
    """Pinned: a change of hash or data order would silently move tasks between splits."""
    test_ids = [t.name for t in BFCLFactory("simple_python").tasks("test", 5)]
    assert test_ids == [f"simple_python_{i}" for i in range(5)]
    small = {e.id for e in BFCLFactory("simple_python", test_fraction=0.2).split_entries("test")}
    assert small and small < {e.id for e in BFCLFactory("simple_python").split_entries("test")}


def test_bad_split_category_fraction_and_overrun_are_named():
    with pytest.raises(ValueError, match="category"):
        BFCLFactory("simple_rust")
    with pytest.raises(ValueError, match="test_fraction"):
        BFCLFactory("simple_python", test_fraction=1.0)
    factory = BFCLFactory("simple_python")
    with pytest.raises(ValueError, match="split"):
        factory.tasks("dev", 1)
    with pytest.raises(ValueError, match="test tasks"):
        factory.tasks("test", 10_000)


def _check_schema(schema: dict, where: str) -> None:
    assert schema.get("type") in JSON_TYPES, f"{where}: type {schema.get('type')!r}"
    for name, prop in schema.get("properties", {}).items():
        _check_schema(prop, f"{where}.{name}")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}[]")


@pytest.mark.parametrize("category", SINGLE_TURN_CATEGORIES)
def test_tools_are_valid_openai_function_schemas(category):
    for entry in load_category(category):
        tools = to_openai_tools(entry.functions)
        assert len(tools) == len(entry.functions)
        for tool in tools:
            assert set(tool) == {"type", "function"} and tool["type"] == "function"
            fn = tool["function"]
            assert re.match(TOOL_NAME, fn["name"]), fn["name"]
            assert isinstance(fn.get("description", ""), str)
            params = fn["parameters"]
            assert params["type"] == "object" and isinstance(params["properties"], dict)
            assert set(params.get("required", [])) <= set(params["properties"])
            _check_schema(params, f"{entry.id}:{fn['name']}")
        json.dumps(tools)  # serialisable as sent to a server


def test_tool_conversion_equals_bfcls_own(tmp_path):
    """to_openai_tools == bfcl_eval's convert_to_tool(OPENAI_COMPLETIONS) on every task. BFCL's module
    needs tree_sitter parsers (stubbed here) and writes dirs at import (pointed at tmp): a subprocess."""
    script = textwrap.dedent(
        """
        import json, sys, types
        for name in ("java_parser", "js_parser"):
            stub = types.ModuleType(f"bfcl_eval.model_handler.parser.{name}")
            stub.parse_java_function_call = stub.parse_javascript_function_call = None
            sys.modules[stub.__name__] = stub
        from bfcl_eval.constants.enums import ModelStyle
        from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
        from bfcl_eval.model_handler.utils import convert_to_tool
        from evaluation.environments.bfcl import SINGLE_TURN_CATEGORIES, load_category, to_openai_tools
        n = 0
        for category in SINGLE_TURN_CATEGORIES:
            for e in load_category(category):
                theirs = convert_to_tool(e.functions, GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)
                assert to_openai_tools(e.functions) == theirs, e.id
                n += 1
        print(n)
        """
    )
    env = {**os.environ, "BFCL_PROJECT_ROOT": str(tmp_path), "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    if "No module named 'tenacity'" in out.stderr:
        pytest.skip("bfcl_eval.model_handler.utils needs tenacity")
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) == sum(len(load_category(c)) for c in SINGLE_TURN_CATEGORIES)


def test_make_environment_reads_bfcl_options():
    factory = make_environment(EnvConfig(name="bfcl", options={"category": "multiple", "test_fraction": 0.3}))
    assert isinstance(factory, BFCLFactory) and factory.category == "multiple" and factory.test_fraction == 0.3
    default = make_environment(EnvConfig(name="bfcl"))
    assert default.category == "simple_python"
    with pytest.raises(ValueError, match="unknown bfcl options"):
        make_environment(EnvConfig(name="bfcl", options={"categroy": "multiple"}))


def test_config_with_bfcl_env_builds_the_factory():
    """`env: {name: bfcl, options: ...}` in a config builds the factory."""
    cfg = EnvConfig(name="bfcl", options={"category": "parallel"})
    assert make_environment(cfg).category == "parallel"


# ---------------------------------------------------------------------------------------------- multi-turn


def _mt_env(name: str = "multi_turn_base_0"):
    factory = BFCLFactory("multi_turn_base")
    env = factory.make()
    task = TaskSpec(env="bfcl", category="multi_turn_base", split="?", seed=0, name=name)
    return env, task


def _play_turns(env, turns):
    result = None
    for turn in turns:
        result = env.step(turn)
        if result.done:
            break
    return result


def test_multi_turn_gold_succeeds_on_every_task():
    factory = BFCLFactory("multi_turn_base")
    assert not {t.name for t in factory.tasks("train", 100)} & {t.name for t in factory.tasks("test", 100)}
    env = factory.make()
    failures = []
    try:
        for entry in load_category("multi_turn_base"):
            start = env.reset(TaskSpec("bfcl", "multi_turn_base", "?", entry.index, entry.id))
            assert start.messages and start.tools
            result = _play_turns(env, [m for turn in env.gold_turns() for m in turn])
            if not (result.done and result.success):
                failures.append(entry.id)
    finally:
        env.close()
    assert failures == []


def test_multi_turn_tools_answer_and_state_does_not_leak_between_episodes():
    env, task = _mt_env()  # initial state: /workspace/document holds final_report.pdf
    cd = _turn(_call("cd", '{"folder": "document"}'))
    try:
        for _ in range(2):  # BFCL keys backends by model name + task id: a second episode must start fresh
            env.reset(task)
            result = env.step(cd)
            assert not result.done and [m.role for m in result.messages] == ["tool"]
            assert result.messages[0].tool_call_id == "call_0"
            assert "error" not in result.messages[0].content.lower(), result.messages[0].content
    finally:
        env.close()


def test_multi_turn_wrong_or_missing_or_malformed_calls_fail():
    env, task = _mt_env()
    try:
        env.reset(task)
        silent = _play_turns(env, [Message(role="assistant", content="ok")] * 10)
        assert silent.done and not silent.success and "empty_turn" in silent.messages[-1].content

        env.reset(task)
        gold = env.gold_turns()
        gold[0][0] = _turn(_call("cd", '{"folder": "archive"}'))  # the wrong directory in turn 1
        wrong = _play_turns(env, [m for turn in gold for m in turn])
        assert wrong.done and not wrong.success

        env.reset(task)
        bad_json = env.step(_turn(_call("cd", '{"folder": ')))  # does not decode: ends the user turn
        assert not bad_json.done and bad_json.messages[0].role == "user"
    finally:
        env.close()


def test_multi_turn_force_quits_after_bfcls_step_limit():
    env, task = _mt_env()
    try:
        env.reset(task)
        result = _play_turns(env, [_turn(_call("pwd", "{}"))] * 30)
        assert result.done and not result.success and "force_terminated" in result.messages[-1].content
    finally:
        env.close()
