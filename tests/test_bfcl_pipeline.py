"""BFCL, single-turn (simple_python) and multi-turn (multi_turn_base), through the whole `r2w run` on the tiny
model: the test config with the environment switched to BFCL and tiny counts.

The random tiny model never makes a correct call, so no teacher attempt is verified and the run ends, as it
must, before training, with the reason recorded; the stages before it ran on real BFCL tasks and tools.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from evaluation.environments.bfcl import BFCLFactory
from flows.cli import app
from r2w.contracts import DistillExample, Episode, Message, Trajectory
from r2w.datasets import load_records
from r2w.tool_calls import render_turn
from tests.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.bfcl_pipeline


def bfcl_sets(tmp_path, category: str, steps: int, model_name: str, collection: str) -> list[str]:
    """`r2w run --set` overrides of a two-task BFCL run on the tiny model, with the curated BFCL hints."""
    return [
        f"data_dir={tmp_path / 'data'}",
        "env.name=bfcl",
        f'env.options={{"category": "{category}", "test_fraction": 0.5}}',
        f"env.max_steps={steps}",
        f"hints.collection={collection}",
        'hints.curated_packs=["configs/hints/bfcl_curated.jsonl"]',
        "hints.max_failures=1",
        "collect.episodes=2",
        "teach.tasks=2",
        "teach.samples=1",
        "agent.answer_max_new_tokens=12",
        f"registry.model_name={model_name}",
    ]


@pytest.mark.parametrize(("category", "steps"), [("simple_python", 1), ("multi_turn_base", 2)])
def test_bfcl_runs_through_r2w_run_on_the_tiny_model(tmp_path, category, steps):
    sets = bfcl_sets(tmp_path, category, steps, f"r2w-bfcl-{category}", collection="r2w-hints-bfcl-test")
    result = CliRunner().invoke(app, ["run", "--config", "test", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    flat = re.sub(r"[\s│┌┐└┘─┬┴├┤┼]+", "", result.output)  # the summary table wraps its cells
    assert "whynoverifiedteachersuccessestotrainon" in flat, result.output
    assert "teacherattempts/trajectorieskept2/0" in flat and "gateFAILED" in flat, result.output
    for stage in ("collect", "hints", "teach", "build_examples"):
        assert f"{stage}Completed" in flat, (stage, result.output)
    failures = [e for d in (tmp_path / "data/datasets/failures").iterdir() for e in load_records(d, Episode)]
    assert len(failures) == 2 and {e.env for e in failures} == {"bfcl"} and {e.category for e in failures} == {category}
    assert all(e.tools and e.steps and e.steps[0].prompt[0].content.count("<tools>") == 1 for e in failures)
    assert all(not e.success and e.verdict_by == "environment:bfcl" for e in failures)
    teacher = [e for d in (tmp_path / "data/datasets").glob("teach*/*") for e in load_records(d, Episode)]
    assert not teacher or not any(e.success for e in teacher)


def gold_teacher(category: str, n: int):
    """Answers for a named fake teacher: the gold turns of the first `n` train tasks, keyed by the task's first
    user message; within a conversation, the next gold turn after the last real user message (tool results
    come back as user messages holding `<tool_response>` in the Hermes fallback)."""
    factory = BFCLFactory(category=category, test_fraction=0.5)
    env = factory.make()
    gold: dict[str, list[list[Message]]] = {}
    try:
        for task in factory.tasks("train", n):
            start = env.reset(task)
            first = next(m.content for m in start.messages if m.role == "user")
            gold[first] = env.gold_turns() if hasattr(env, "gold_turns") else [[env.gold_turn(), None]]
    finally:
        env.close()

    def answer(messages: list[dict]) -> str:
        users = [i for i, m in enumerate(messages) if m["role"] == "user" and "<tool_response" not in m["content"]]
        turns = gold.get(messages[users[0]]["content"]) if users else None
        if turns is None:
            return "I cannot help with that."
        turn = min(len(users) - 1, len(turns) - 1)
        step = sum(m["role"] == "assistant" for m in messages[users[-1] :])
        if step >= len(turns[turn]) or turns[turn][step] is None:
            return "Done."
        return render_turn(turns[turn][step])

    return answer


@pytest.mark.parametrize(("category", "steps"), [("simple_python", 1), ("multi_turn_base", 8)])
def test_bfcl_goes_through_every_stage_with_a_teacher_that_succeeds(tmp_path, category, steps):
    """Issue 22's whole pipeline on BFCL: the teacher (a named fake behind the OpenAI API that answers with BFCL's
    own gold calls) is verified by BFCL's checker, the tiny student is trained on its tool turns, evaluated on
    held-out tasks and gated; the gate decides and says why."""
    with FakeOpenAIServer(gold_teacher(category, 2)) as teacher:
        sets = bfcl_sets(tmp_path, category, steps, f"r2w-bfcl-gold-{category}", collection="r2w-hints-bfcl-gold")
        sets += [
            f"models.teacher_url={teacher.url}",
            "evaluate.test_episodes=2",
            "evaluate.random_episodes=2",
            "distill.max_length=24576",  # multi-turn: the tools block alone is 11-19k tokens of the tiny tokenizer
        ]
        result = CliRunner().invoke(app, ["run", "--config", "test", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    flat = re.sub(r"[\s│┌┐└┘─┬┴├┤┼]+", "", result.output)
    assert "teacherattempts/trajectorieskept2/2" in flat, result.output  # BFCL's checker verified the gold calls
    for stage in ("collect", "hints", "teach", "build_examples", "train", "evaluate", "gate", "register"):
        assert f"{stage}Completed" in flat, (stage, result.output)
    assert "gatePASSED" in flat or "gateFAILED" in flat, result.output
    trajectories = [t for d in (tmp_path / "data/datasets/trajectories").iterdir() for t in load_records(d, Trajectory)]
    assert len(trajectories) == 2 and all(t.episode.verdict_by == "environment:bfcl" for t in trajectories)
    assert all(any(s.tool_calls for s in t.episode.steps) for t in trajectories)
    examples = [
        x for d in (tmp_path / "data/datasets/distill-examples").iterdir() for x in load_records(d, DistillExample)
    ]
    assert examples and all(x.loss_on == "assistant_turns" for x in examples if x.category == category)
