"""Rounds that move forward (flows/rounds.py) and what each round costs (r2w/costs.py).

The multi-round test runs the real flow three times on the test config with `collect.offset: auto`:
every round trains on the next unseen train tasks, links to the round before, and a rerun of the
last round's inputs stops with "nothing new" instead of registering the same student again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.cadence import Novelty
from flows.rounds import PreviousRound, next_round, range_end, round_lineage, window_end
from r2w.config import load_config
from r2w.costs import StageCost, break_even, measured
from r2w.registry import Lineage


def test_break_even_converts_cpu_to_tokens_at_the_round_generation_rate():
    costs = {
        "collect": StageCost(wall_s=2, cpu_s=10, tokens=1000),
        "teach": StageCost(wall_s=3, cpu_s=10, tokens=3000),  # 200 tokens per CPU second
        "train": StageCost(wall_s=5, cpu_s=30, tokens=0),  # 30 s x 200 = 6000 token-equivalents
    }
    b = break_even(costs, hinted_tokens=150.0, student_tokens=100.0, episodes_per_day=100)
    assert b.tokens_per_cpu_s == 200 and b.round_cost_tokens == 10_000 and b.daily_savings == 5000
    assert b.days == 2.0 and b.round_cpu_s == 50 and "2.00 days" in b.text()
    never = break_even(costs, hinted_tokens=100.0, student_tokens=120.0, episodes_per_day=100)
    assert never.days is None and never.text().startswith("never")
    assert "breakeven.days" not in never.metrics() and never.metrics()["breakeven.savings_per_episode"] == -20


def test_measured_counts_wall_and_cpu_of_the_block():
    with measured() as cost:
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
    assert cost.cpu_s >= 0.15 and cost.wall_s >= 0.15 and cost.tokens == 0
    assert set(cost.metrics("train")) == {
        "cost.train.wall_s",
        "cost.train.cpu_s",
        "cost.train.tokens",
        "cost.train.usd",
    }


def test_round_lineage_records_task_range_window_and_previous_round():
    cfg = load_config("test", {"collect": {"offset": 8}, "teach": {"tasks": 6}})
    before = Lineage(hint_snapshot="h1", training_dataset="d1", task_range="4:8")
    lineage = round_lineage(cfg, "run-1", PreviousRound(version="2", lineage=before))
    assert lineage.task_range == "8:14" and lineage.window == "" and lineage.previous_version == "2"
    assert lineage.previous_hint_snapshot == "h1" and lineage.previous_training_dataset == "d1"
    assert lineage.config_hash == cfg.hash and lineage.tags()["r2w.task_range"] == "8:14"
    assert range_end("4:8") == 8 and range_end("") == 0
    closed = PreviousRound(version="1", lineage=Lineage(window="2026-11-01/2026-11-02"), started_at="2026-11-03")
    open_ended = PreviousRound(version="1", lineage=Lineage(window="2026-11-01/"), started_at="2026-11-03T00:00")
    assert window_end(closed) == "2026-11-02" and window_end(open_ended) == "2026-11-03T00:00"


def test_auto_offset_and_window_resolve_for_a_first_round(tmp_path):
    cfg = load_config("test", {"data_dir": str(tmp_path), "collect": {"offset": "auto", "since": "auto"}})
    resolved, previous = next_round(cfg)
    assert previous is None and resolved.collect.offset == 0 and resolved.collect.since is None
    assert resolved.hash == load_config("test", {"data_dir": str(tmp_path)}).hash  # auto=0 is the plain config


def test_auto_offset_skips_consumed_ranges_and_never_a_rejected_or_pending_round(tmp_path):
    """Real MLflow registry (SQLite): only complete versions and consumed ranges move the offset."""
    from r2w.registry import Tag
    from r2w.tracking import client_for, start_run

    name = "r2w-offset-student"
    cfg = load_config(
        "test", {"data_dir": str(tmp_path), "collect": {"offset": "auto"}, "registry": {"model_name": name}}
    )
    client = client_for(cfg)
    client.create_registered_model(name)
    for task_range, state in (("0:4", "complete"), ("4:8", "pending")):  # v2: a run killed before its alias
        client.create_model_version(
            name, source=str(tmp_path), tags={"r2w.task_range": task_range, Tag.REGISTRATION: state}
        )
    resolved, previous = next_round(cfg)
    assert previous.version == "1" and resolved.collect.offset == 4, "a pending version is its own run's round"

    def round_run(model: str, task_range: str, outcome: str) -> None:
        tags = {Tag.MODEL: model, Tag.TASK_RANGE: task_range, Tag.ROUND: outcome}
        client.set_terminated(start_run(client, cfg, "retrain-test", tags=tags))

    round_run(name, "4:8", "retry")  # its student failed the gate: the same tasks next round
    assert next_round(cfg)[0].collect.offset == 4
    round_run(name, "4:8", "consumed")  # a rerun found no failures on 4:8: nothing to learn there
    round_run("another-model", "8:12", "consumed")
    assert next_round(cfg)[0].collect.offset == 8


def test_identical_inputs_are_never_worth_retraining():
    cfg = load_config("test")
    same = Novelty(new_failures=3, new_hints=1, since_version="3", same_inputs_as="2")
    assert not same.worth_retraining(cfg)
    assert same.reason(cfg).startswith("skipped: nothing new since v3: ") and "v2 was trained on" in same.reason(cfg)


@pytest.mark.rounds
def test_three_rounds_move_forward_and_never_register_the_same_inputs_twice(tmp_path):
    from flows.retrain import retrain
    from r2w.tracking import client_for

    name = "r2w-rounds-student"
    overrides = {"data_dir": str(tmp_path), "collect": {"offset": "auto"}, "registry": {"model_name": name}}
    started = time.perf_counter()
    rounds = [retrain(config="test", overrides=overrides) for _ in range(3)]
    assert [s.registered_version for s in rounds] == ["1", "2", "3"], [s.reasons for s in rounds]
    assert [s.task_range for s in rounds] == ["0:4", "4:8", "8:12"]
    assert [s.previous_version for s in rounds] == [None, "1", "2"]
    assert all(s.stage_states["collect"] == "Completed" for s in rounds)  # new tasks: nothing reused

    client = client_for(load_config("test", overrides))
    lineages = [Lineage.from_tags(client.get_model_version(name, v).tags) for v in ("1", "2", "3")]
    assert [x.task_range for x in lineages] == ["0:4", "4:8", "8:12"]
    assert len({x.training_dataset for x in lineages}) == 3, "a round trained on data an earlier one used"
    assert len({x.failures_dataset for x in lineages}) == 3
    for before, after in zip(lineages, lineages[1:], strict=False):
        assert after.previous_training_dataset == before.training_dataset
        assert after.previous_hint_snapshot == before.hint_snapshot
    assert [x.previous_version for x in lineages] == ["", "1", "2"]

    # costs: per stage in MLflow, the break-even in the summary and the gate report
    first = rounds[0]
    metrics = client.get_run(first.mlflow_run_id).data.metrics
    assert metrics["cost.train.cpu_s"] > 0 and metrics["cost.collect.tokens"] > 0 and metrics["cost.teach.tokens"] > 0
    assert "cost.total.cpu_s" in metrics and "breakeven.savings_per_episode" in metrics
    assert first.break_even is not None and first.break_even.round_tokens > 0
    assert "## Cost and break-even" in Path(first.report_path).read_text()

    # the last round's inputs again (its offset written out): a cached stop, never a 4th version
    again = retrain(config="test", overrides={**overrides, "collect": {"offset": 8}})
    assert again.registered_version is None
    assert again.reasons[0].startswith("skipped: nothing new since v3") and "v3 was trained on" in again.reasons[0]
    assert again.stage_states["collect"] == "Cached" and "train" not in again.stage_states
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == ["1", "2", "3"]
    print(f"\nthree rounds + identical rerun: {time.perf_counter() - started:.0f} s")


@pytest.mark.rounds
def test_a_round_whose_student_failed_the_gate_is_retried_not_skipped(tmp_path):
    """Real flow, real MLflow registry: a rejected round leaves the offset where it was; the next round plays the same
    train tasks, and once a student passes, the round after it moves on."""
    from flows.retrain import retrain
    from r2w.registry import Tag
    from r2w.tracking import client_for

    name = "r2w-rejected-student"
    base = {"data_dir": str(tmp_path), "collect": {"offset": "auto"}, "registry": {"model_name": name}}
    strict = {**base, "gate": {"max_kl": 0.0}}  # any trained student drifts from the base: rejected
    rejected = retrain(config="test", overrides=strict)
    assert not rejected.gate_passed and rejected.registered_version is None, rejected.reasons
    assert rejected.task_range == "0:4" and rejected.round == "retry"
    client = client_for(load_config("test", base))
    tags = client.get_run(rejected.mlflow_run_id).data.tags
    assert tags[Tag.ROUND] == "retry" and tags[Tag.GATE] == "failed" and tags[Tag.TASK_RANGE] == "0:4"

    retried = retrain(config="test", overrides=base)
    assert retried.task_range == "0:4", "the rejected round's tasks were skipped"
    assert retried.stage_states["collect"] == "Cached"  # the same tasks: the rejected round's rollouts reused
    assert retried.registered_version == "1" and retried.round == "registered", retried.reasons
    assert retrain(config="test", overrides=base).task_range == "4:8"
