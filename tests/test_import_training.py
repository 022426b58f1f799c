"""Imported tasks become training data (issue 23.2).

`r2w collect import` stores failures; `r2w run` with `collect.source: imports` reads those stored datasets
(never the trace files again) and teaches on the imported failures' own tasks: restored by an environment
that can (`restore`, the help-desk example), or replayed in the `trace_replay` tool sandbox, whose
verdict comes from the records' gold data. The full runs of every format are marked `imports`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from import_traces import (
    FORMATS,
    desk_teacher,
    gold_answer,
    helpdesk_trace,
    weather_teacher,
    weather_traces,
)
from typer.testing import CliRunner

from evaluation.environments import make_environment
from evaluation.environments.trace_replay import call_key
from flows.cli import app
from r2w.config import ConfigError, load_config
from r2w.contracts import Episode, Hint, Message, ToolCall, ToolFunction
from r2w.datasets import load_records, recorded_imports
from r2w.rollout import Decision, run_chat_episodes
from r2w.tool_calls import render_turn
from tasks.collect import collect_failures
from tests.fake_openai import FakeOpenAIServer

runner = CliRunner()


def collect_import(data: Path, traces: Path, outcomes: Path | None) -> str:
    """`r2w collect import` as a person runs it; returns the hash of the import dataset it stored."""
    before = {r.hash for r in recorded_imports(data / "datasets")}
    args = ["collect", "import", str(traces), *(["--outcomes", str(outcomes)] if outcomes else [])]
    result = runner.invoke(app, [*args, "--config", "test", "--set", f"data_dir={data}"])
    assert result.exit_code == 0, result.output
    (new,) = [r.hash for r in recorded_imports(data / "datasets") if r.hash not in before]
    return new


def imports_config(data: Path, dataset: str | None = None, **sections):
    collect = {"source": "imports", **({"import_datasets": [dataset[:12]]} if dataset else {})}
    return load_config("test", {"data_dir": str(data), "collect": collect, **sections})


class ReplayingAgent:
    """A scripted policy (a named fake, no model): calls the trace's first tool call again, with its
    arguments re-spelled (other key order and spacing), then answers `answer(task text)`."""

    name = model_id = "scripted-replayer"

    def __init__(self, answer, arguments=None) -> None:
        self.answer, self.arguments = answer, arguments

    def act_chat(self, states):
        out = []
        for s in states:
            if not s.steps:
                name = s.tools[0]["function"]["name"]
                args = self.arguments or {"city": s.task_text.split("weather in ")[1].rstrip("?")}
                call = ToolFunction(name=name, arguments=json.dumps(args, indent=2))
                turn = Message(role="assistant", tool_calls=[ToolCall(id="r0", function=call)])
            else:
                turn = Message(role="assistant", content=self.answer(s.task_text))
            out.append(Decision(action=render_turn(turn), response=render_turn(turn), prompt=[], turn=turn))
        return out


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imports") / "data"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_imported_failure_is_read_from_the_store_and_replayed_in_the_sandbox(fmt, shared_data, tmp_path):
    traces, outcomes = weather_traces(fmt, 2, tmp_path / "traces")
    stored = collect_import(shared_data, traces, outcomes)
    traces.unlink()  # `r2w run` reads the stored dataset, never the trace file again
    cfg = imports_config(shared_data, stored, env={"name": "trace_replay"})
    collected = collect_failures(cfg, backend=None)
    failures = load_records(collected.failures, Episode)
    assert len(failures) == 2 and all(e.source == fmt for e in failures)
    assert all(e.gold["expected_answer"].startswith("It is rainy and 14°C in") for e in failures)
    assert {e.category for e in failures} == {"chat" if fmt == "openai" else "weather_agent"}  # the replay tasks'

    factory = make_environment(cfg.env, failures)
    tasks = [factory.restore(e) for e in failures]
    city = {t.name: e.task.split("weather in ")[1].rstrip("?") for t, e in zip(tasks, failures, strict=True)}
    good = run_chat_episodes(
        factory, [(t, 0) for t in tasks], ReplayingAgent(lambda q: gold_answer(q.split("in ")[1][:-1])), 3
    )
    recorded = {e.episode_id: e.steps[0].tool_results[0].content for e in failures}
    for episode, task in zip(good, tasks, strict=True):
        assert episode.success and episode.verdict_by == "gold:expected_answer", episode
        assert episode.steps[0].tool_results[0].content == recorded[task.name]  # same tool + canonical arguments
        assert city[task.name] in episode.task
    wrong = run_chat_episodes(
        factory, [(tasks[0], 0)], ReplayingAgent(lambda q: "It is 57°F.", {"city": "Atlantis"}), 3
    )
    assert not wrong[0].success
    assert (
        "replay sandbox: the imported trace has no result for get_weather" in wrong[0].steps[0].tool_results[0].content
    )


def test_call_matching_ignores_key_order_and_spacing_only():
    assert call_key("f", '{"a": 1, "b": [2]}') == call_key("f", {"b": [2], "a": 1})
    assert call_key("f", '{"a": 1}') != call_key("f", '{"a": 2}') != call_key("g", '{"a": 2}')


def test_the_window_selects_imported_failures_by_their_own_time_and_a_missing_store_is_a_config_error(
    shared_data, tmp_path
):
    with pytest.raises(ConfigError, match="no import datasets under .*run `r2w collect import"):
        collect_failures(imports_config(tmp_path / "empty"), backend=None)
    traces, outcomes = weather_traces("openai", 3, tmp_path / "traces")  # 3: not the content of another test's
    stored = collect_import(shared_data, traces, outcomes)

    def window(**bounds):
        collect = {"source": "imports", "import_datasets": [stored[:12]], **bounds}
        return collect_failures(imports_config(shared_data, collect=collect), backend=None).n_failures

    assert window(since="2026-11-11") == 0  # the records are of 2026-11-10
    assert window(since="2026-11-10", until="2026-11-11") == 3
    with pytest.raises(ConfigError, match="import_datasets: 'ffff' matches no import datasets"):
        collect_failures(imports_config(shared_data, "ffff"), backend=None)


def test_replay_without_gold_data_asks_for_a_verifier(shared_data):
    stored = collect_import(shared_data, Path(__file__).parent / "data/traces/langsmith_runs.jsonl", None)
    cfg = imports_config(shared_data, stored, env={"name": "trace_replay"})
    with pytest.raises(ConfigError, match="have no gold data to verify a replay against .*or a configured verifier"):
        collect_failures(cfg, backend=None)


def test_without_gold_a_configured_verifier_decides_the_replay(shared_data, tmp_path):
    """Issue 23.3 meets 23.2: the sandbox has no verdict of its own for a trace without gold; a team's callable
    (verify.kind callable) then decides, in teaching and on the held-out replays alike."""
    from r2w.verifiers import make_verifier, verify_episodes
    from tasks.gate import verified

    traces, _ = weather_traces("openai", 2, tmp_path / "traces")
    stored = collect_import(shared_data, traces, None)  # no --outcomes: no gold data
    verify = {"kind": "callable", "callable": "tests.verifier_fns:says_yes"}
    cfg = imports_config(shared_data, stored, env={"name": "trace_replay"}, verify=verify)
    failures = load_records(collect_failures(cfg, backend=None).failures, Episode)  # no config error now
    assert failures and not any(e.gold for e in failures)
    factory = make_environment(cfg.env, failures, require_gold=False)
    tasks = [factory.restore(e) for e in failures]
    answers = {tasks[0].name: "yes, it rains", tasks[1].name: "no idea"}
    agent = ReplayingAgent(lambda q: "yes, it rains" if q == failures[0].task else "no idea")
    played = run_chat_episodes(factory, [(t, 0) for t in tasks], agent, 3)
    assert {e.verdict_by for e in played} == {"unverified"} and not any(e.success for e in played)
    judged, _ = verify_episodes(make_verifier(cfg.verify), played)
    assert [e.success for e in judged] == [answers[t.name].startswith("yes") for t in tasks] == [True, False]
    assert {e.verdict_by for e in judged} == {"callable:tests.verifier_fns:says_yes"}
    assert [e.success for e in verified(cfg, played)] == [True, False]  # the gate's held-out scoring
    with pytest.raises(ConfigError, match="no gold data"):
        make_environment(cfg.env, failures)  # the environment alone still refuses to guess


def test_the_teacher_re_attempts_the_restored_help_desk_task_and_never_a_held_out_one(
    shared_data, tmp_path, tiny_backend
):
    from evaluation.environments.examples.helpdesk import HelpDesk
    from tasks.teach import teach

    trace = helpdesk_trace(tmp_path / "desk.jsonl", [("train", 7), ("test", 20_003)])
    desk = {"name": "evaluation.environments.examples.helpdesk:HelpDesk", "max_steps": 3}
    stored = collect_import(shared_data, trace, None)
    cfg = imports_config(shared_data, stored, env=desk, teach={"tasks": 4, "samples": 2})
    collected = collect_failures(cfg, backend=None)
    failures = load_records(collected.failures, Episode)
    assert {e.category for e in failures} == {"refund"}  # filed where the teacher's retrieval looks (was "chat")
    asked: list[tuple[str, str]] = []

    def retrieve(category: str, query: str, k: int) -> list[Hint]:
        asked.append((category, query))
        return []

    taught = teach(cfg, tiny_backend, retrieve, "empty", imported=collected.failures)
    episodes = load_records(taught.episodes, Episode)
    assert taught.task_source == "imports" and taught.tasks == 1 and taught.not_restored == 1
    assert {e.task_id for e in episodes} == {"helpdesk/refund/train/7"} and len(episodes) == 2
    ask = HelpDesk().make().reset(HelpDesk().tasks("train", 1, 7)[0]).messages[0].content
    (traced,) = [e for e in failures if e.task_id.endswith("/train/7")]
    assert episodes[0].task == ask == traced.task  # the very task of the trace: same order, same amount
    assert {c for c, _ in asked} == {"refund"}


# ------------------------------------------------------------------ full runs (marked: minutes in all)


def run_cli(data: Path, *sets: str):
    args = [a for s in (f"data_dir={data}", *sets) for a in ("--set", s)]
    result = runner.invoke(app, ["run", "--config", "test", *args])
    assert result.exit_code == 0, result.output
    return result.output


def assert_gated(data: Path, model_name: str, output: str) -> None:
    """The run reached the gate: a passing student is registered as challenger, a failing one has reasons."""
    from r2w.tracking import client_for

    client = client_for(load_config("test", {"data_dir": str(data)}))
    experiment = client.get_experiment_by_name("r2w-test")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'retrain-test'")
    tags = run.data.tags
    assert tags.get("r2w.gate") in ("passed", "failed"), (tags, output)
    if tags["r2w.gate"] == "passed":
        assert str(client.get_model_version_by_alias(model_name, "challenger").version) == "1"
    else:
        assert tags["r2w.gate_reasons"], tags


def curated_pack(path: Path, category: str) -> Path:
    text = "convert Fahrenheit readings before you reply"  # not in any prompt: the leak check keeps the rows
    hint = Hint(hint_id=Hint.make_id(text, category), text=text,
                applicability="WHEN asked about the weather", category=category, source="curated")  # fmt: skip
    path.write_text(hint.model_dump_json() + "\n")
    return path


@pytest.mark.imports
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_imported_trace_trains_a_student_through_r2w_run(fmt, tmp_path):
    """collect import -> r2w run (source imports, trace_replay) -> a registered or gate-rejected student."""
    data = tmp_path / "data"
    traces, outcomes = weather_traces(fmt, 6, tmp_path / "traces")  # 1-3 of them land in the held-out split
    collect_import(data, traces, outcomes)
    traces.unlink()
    category = "chat" if fmt == "openai" else "weather_agent"
    with FakeOpenAIServer(weather_teacher) as teacher:
        out = run_cli(
            data,
            "collect.source=imports",
            "env.name=trace_replay",
            "env.max_steps=3",
            f"models.teacher_url={teacher.url}",
            f'hints.curated_packs=["{curated_pack(tmp_path / "pack.jsonl", category)}"]',
            f"registry.model_name=r2w-imports-{fmt}",
            "teach.samples=2",
        )
    assert_gated(data, f"r2w-imports-{fmt}", out)
    teacher_eps = [e for d in (data / "datasets/teacher-episodes").iterdir() for e in load_records(d, Episode)]
    assert teacher_eps and {e.env for e in teacher_eps} == {"trace_replay"}
    assert all(e.success for e in teacher_eps)  # the fake teacher gives the gold answer: verified by the sandbox


@pytest.mark.imports
def test_an_imported_help_desk_failure_trains_on_its_restored_task_through_r2w_run(tmp_path):
    data = tmp_path / "data"
    trace = helpdesk_trace(tmp_path / "desk.jsonl", [("train", s) for s in (3, 5, 8)] + [("test", 20_001)])
    collect_import(data, trace, None)
    with FakeOpenAIServer(desk_teacher) as teacher:
        out = run_cli(
            data,
            "collect.source=imports",
            "env.name=evaluation.environments.examples.helpdesk:HelpDesk",
            "env.max_steps=4",
            f"models.teacher_url={teacher.url}",
            "hints.k=0",
            "registry.model_name=r2w-imports-desk",
            "teach.samples=2",
            "agent.answer_max_new_tokens=16",
        )
    teacher_eps = [e for d in (data / "datasets/teacher-episodes").iterdir() for e in load_records(d, Episode)]
    assert {e.task_id for e in teacher_eps} == {f"helpdesk/refund/train/{s}" for s in (3, 5, 8)}, out
    assert all(e.success for e in teacher_eps)
    assert_gated(data, "r2w-imports-desk", out)
