"""Tool-calling chat agents: contracts (with migration), tool-call parsing, the environment seam,
the plugin guard, and the example help desk, on real rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2w.config import load_config
from r2w.contracts import Episode, Hint, Message, ToolCall, ToolFunction
from r2w.datasets import load_records, save_records
from r2w.plugins import PluginError, load_chat_environment
from r2w.rollout import Decision, run_chat_episodes
from r2w.tool_calls import parse_tool_calls, render_turn

V1_RECORD = {  # an Episode as r2w wrote it before tools existed (no schema_version, no tool fields)
    "episode_id": "e-1", "env": "twx", "category": "twc", "task_id": "twx/twc/train/0", "split": "train",
    "seed": 0, "task": "tidy up", "success": False, "created_at": "2026-11-20T10:00:00+00:00",
    "steps": [{"index": 0, "observation": "a room", "valid_actions": ["look"], "response": "look",
               "action": "look", "prompt": [{"role": "user", "content": "Next action:"}]}],
}  # fmt: skip


def test_a_dataset_written_before_tools_reads_as_schema_2(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    table = pa.table({"id": ["e-1"], "json": [json.dumps(V1_RECORD)]})
    pq.write_table(table, folder / "data.parquet")
    ref = save_records([Episode.model_validate(V1_RECORD)], tmp_path / "datasets", "failures", {})
    (episode,) = load_records(ref, Episode)
    assert episode.schema_version == 2 and episode.tools == [] and episode.steps[0].tool_calls == []
    assert episode.steps[0].prompt[0].model_dump() == {"role": "user", "content": "Next action:"}  # lean dump
    with pytest.raises(ValueError, match="schema_version 9 is newer"):
        Episode.model_validate({**V1_RECORD, "schema_version": 9})


def test_tool_calls_parse_and_malformed_ones_are_counted_not_raised():
    ok = parse_tool_calls(
        'Sure.<tool_call>{"name": "refund", "arguments": {"order_id": "A-1", "amount": 5}}</tool_call>', 2
    )
    assert ok.content == "Sure." and ok.error == ""
    assert ok.calls[0].id == "call_2_0" and json.loads(ok.calls[0].function.arguments) == {
        "order_id": "A-1",
        "amount": 5,
    }
    as_text = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert json.loads(as_text.calls[0].function.arguments) == {"x": 1}
    for bad, why in [
        ("<tool_call>{not json}</tool_call>", "tool call 0"),
        ('<tool_call>{"arguments": {}}</tool_call>', "name"),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "arguments"),
        ('<tool_call>{"name": "f"', "without a matching"),
    ]:
        parsed = parse_tool_calls(bad)
        assert parsed.calls == [] and why in parsed.error, (bad, parsed.error)
    assert parse_tool_calls("no calls here").error == ""


class GoldDesk:
    """A scripted policy (a named fake, no model): looks the order up, refunds `fraction` of it, answers."""

    name = model_id = "scripted-desk-agent"

    def __init__(self, fraction: float = 1.0) -> None:
        self.fraction = fraction

    def act_chat(self, states):
        out = []
        for s in states:
            order = next(m.content for m in s.conversation if m.role == "user").split("order ")[1].split(" ")[0]
            if not s.steps:
                call = ToolFunction(name="lookup_order", arguments=json.dumps({"order_id": order}))
                turn = Message(role="assistant", tool_calls=[ToolCall(id="c0", function=call)])
            elif len(s.steps) == 1:
                amount = json.loads(s.conversation[-1].content)["amount"] * self.fraction
                call = ToolFunction(name="refund", arguments=json.dumps({"order_id": order, "amount": amount}))
                turn = Message(role="assistant", tool_calls=[ToolCall(id="c1", function=call)])
            else:
                turn = Message(role="assistant", content="Refunded.")
            out.append(Decision(action=render_turn(turn), response=render_turn(turn), prompt=[], turn=turn))
        return out


class Answers:
    """A scripted policy (a named fake): always answers in plain text."""

    name = model_id = "scripted-answer"

    def act_chat(self, states):
        turn = Message(role="assistant", content="heads")
        return [Decision(action="heads", response="heads", prompt=[], turn=turn) for _ in states]


def test_help_desk_verifier_checks_state_through_a_real_rollout():
    from evaluation.environments.examples.helpdesk import HelpDesk

    factory = load_chat_environment("evaluation.environments.examples.helpdesk:HelpDesk", {}, timeout_s=10)
    tasks = factory.tasks("test", 6)
    assert not {t.task_id for t in tasks} & {t.task_id for t in HelpDesk().tasks("train", 6)}
    good = run_chat_episodes(factory, [(t, 0) for t in tasks], GoldDesk(), max_steps=5)
    assert all(e.success and len(e.steps) == 3 for e in good)
    assert (
        good[0].tools[0]["function"]["name"] == "lookup_order"
        and good[0].steps[1].tool_calls[0].function.name == "refund"
    )
    assert good[0].steps[0].tool_results[0].role == "tool" and good[0].steps[0].tool_results[0].tool_call_id == "c0"
    half = run_chat_episodes(factory, [(t, 0) for t in tasks], GoldDesk(0.5), max_steps=5)
    assert not any(e.success for e in half)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("plugin_envs:Raising", r"plugin_envs:Raising: task coinflip/coin/train/0: step raised KeyError\('balance'\)"),
        (
            "plugin_envs:WrongType",
            r"plugin_envs:WrongType: task coinflip/coin/train/0: step: expected TurnResult, got dict",
        ),
        ("plugin_envs:Hanging", r"plugin_envs:Hanging: task coinflip/coin/train/0: reset did not answer within"),
        ("plugin_envs:Missing", r"env.name: module 'plugin_envs' has no attribute 'Missing'"),
    ],
)
def test_a_broken_plugin_gets_an_error_naming_plugin_task_and_field(plugin, message):
    with pytest.raises(PluginError, match=message):
        factory = load_chat_environment(plugin, {}, timeout_s=1)
        run_chat_episodes(factory, [(factory.tasks("train", 1)[0], 0)], Answers(), max_steps=2)


def test_env_name_must_be_builtin_or_import_path(tmp_path):
    with pytest.raises(ValueError, match="neither a built-in environment"):
        load_config("test", {"data_dir": str(tmp_path), "env": {"name": "my desk"}})
    cfg = load_config("test", {"data_dir": str(tmp_path), "env": {"name": "pkg.mod:Desk", "options": {"a": 1}}})
    assert cfg.env.options == {"a": 1}


def test_seam_only_environment_runs_the_whole_pipeline_on_the_tiny_model(tmp_path):
    """A team's environment, named by import path, through collect -> hints -> teach -> distill -> gate -> register."""
    from flows.retrain import retrain
    from r2w.agent_prompt import HINTS_OPEN, SYSTEM_CHAT
    from r2w.contracts import DistillExample

    pack = tmp_path / "coin_pack.jsonl"
    hint = Hint(hint_id=Hint.make_id("call flip once", "coin"), text="call flip once",
                applicability="WHEN asked to call it", category="coin", source="curated")  # fmt: skip
    pack.write_text(hint.model_dump_json() + "\n")
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "env": {"name": "plugin_envs:CoinFlip", "max_steps": 2},
        "hints": {"collection": "r2w-hints-coin", "curated_packs": [str(pack)]},
        "collect": {"episodes": 6},
        "teach": {"tasks": 6, "samples": 4},
        "registry": {"model_name": "r2w-coin-student"},
        "evaluate": {"retention_tasks": 1},
    }
    summary = retrain(config="test", overrides=overrides)
    assert summary.failures > 0 and summary.trajectories_kept > 0, summary
    assert summary.stage_states["train"] == "Completed" and summary.stage_states["register"] == "Completed"
    assert summary.registered_version == "1" or summary.reasons, summary
    data = Path(overrides["data_dir"]) / "datasets"
    (failures_dir,) = list((data / "failures").iterdir())
    failure = load_records(failures_dir, Episode)[0]
    assert failure.env == "coinflip" and failure.tools == [t for t in failure.tools if t["function"]["name"] == "flip"]
    examples = [e for d in (data / "distill-examples").iterdir() for e in load_records(d, DistillExample)]
    assert examples and all(e.prompt[0].content.startswith(SYSTEM_CHAT) for e in examples)
    assert not any(HINTS_OPEN in m.content for e in examples for m in e.prompt)  # hint-free inputs


def test_the_readme_bring_your_own_agent_page_works_as_written(tmp_path, monkeypatch, tiny_model):
    """Copy the example environment into a package, write the README's config, run `r2w run` (tiny model)."""
    import re
    import shutil

    from typer.testing import CliRunner

    from flows.cli import app

    repo = Path(__file__).resolve().parent.parent
    page = (repo / "README.md").read_text().split("## Bring your own agent", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "mydesk").mkdir()
    (tmp_path / "mydesk" / "__init__.py").write_text("")
    shutil.copy(repo / "evaluation/environments/examples/helpdesk.py", tmp_path / "mydesk" / "desk.py")  # step 1
    config = re.search(r"```yaml\n(.*?)```", page, re.DOTALL).group(1)  # step 2, as written
    (tmp_path / "mydesk.yaml").write_text(config)
    monkeypatch.syspath_prepend(str(tmp_path))  # step 3: PYTHONPATH=.
    sets = [f"data_dir={tmp_path / 'data'}", f"models.base={tiny_model}", "teach.tasks=4", "collect.episodes=4",
            "agent.answer_max_new_tokens=16"]  # fmt: skip
    result = CliRunner().invoke(
        app, ["run", "--config", str(tmp_path / "mydesk.yaml"), *[a for s in sets for a in ("--set", s)]]
    )
    assert result.exit_code == 0, result.output
    failures = [e for d in (tmp_path / "data/datasets/failures").iterdir() for e in load_records(d, Episode)]
    assert (
        failures
        and {e.env for e in failures} == {"helpdesk"}
        and failures[0].tools[0]["function"]["name"] == "lookup_order"
    )
