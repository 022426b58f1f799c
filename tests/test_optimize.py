"""Extractor optimisation: the uplift metric from real teacher rollouts, and the compile path."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from prompts.optimize import load_extractor
from r2w.backends.base import Completion, SamplingParams
from r2w.backends.dspy_lm import make_extractor_lm
from r2w.config import ExtractorConfig, load_config
from r2w.contracts import Episode, Message, Step
from r2w.hintstore import HintStore
from tasks.hints import extract_and_store
from tasks.optimize import HintUplift, compile_extractor

HINT = "WHEN a {container} is closed: open the {container} before putting anything in it"


class ScriptedBackend:
    """A GenerationBackend with fixed answers, standing in for an extractor LM that follows the format."""

    name = identity = "scripted"  # a named fake (no weights)
    model_path = adapter_path = None

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)

    def generate(self, prompts, params: SamplingParams, choices=None) -> list[Completion]:
        texts = [self.answers.pop(0) if self.answers else "no rules here" for _ in prompts]
        return [Completion(texts=[t], prompt_tokens=10, completion_tokens=[20]) for t in texts]

    def close(self) -> None:
        pass


def failure(i: int) -> Episode:
    step = Step(
        index=0,
        observation=f"You are in the kitchen (game {i}). The fridge is closed.",
        valid_actions=["open fridge", "look around"],
        prompt=[Message(role="user", content="x")],
        response="look around",
        action="look around",
    )
    return Episode(
        episode_id=f"ep-{i}",
        env="twx",
        category="twc",
        task_id=f"task-{i}",
        split="train",
        seed=i,
        task="Tidy up the house.",
        steps=[step],
        success=False,
        outcome="step limit",
    )


@pytest.fixture
def cfg(tmp_path: Path, tiny_model: Path):
    # the tiny model is already provisioned under the session dir; point models.base at its folder
    return load_config("test", {"data_dir": str(tmp_path), "models.base": str(tiny_model), "env.max_steps": 3})


def test_uplift_metric_from_real_rollouts(cfg, tiny_backend) -> None:
    metric = HintUplift(cfg, tiny_backend, tasks=2, samples=2)
    example = dspy.Example(category="twc")
    assert metric(example, dspy.Prediction(hints="the agent should open things")) == 0.0  # no valid rule
    assert metric(example, dspy.Prediction(hints=None)) == 0.0
    assert metric.episodes_played == 0  # unparseable output costs no rollouts

    value = metric(example, dspy.Prediction(hints=HINT))
    assert metric.episodes_played == 8  # 2 tasks x 2 samples, with and without the hint
    (with_key,) = [k for k in metric.rates if k[1]]
    assert "open the {container} before putting anything in it" in with_key[1]
    assert value == metric.rates[with_key] - metric.rates[("twc", "")]
    assert all(rate * 4 == int(rate * 4) for rate in metric.rates.values())  # successes out of 4 episodes
    assert -1.0 <= value <= 1.0
    assert metric(example, dspy.Prediction(hints=f"- {HINT}.")) == value  # same hint text: cached
    metric(example, dspy.Prediction(hints="WHEN you are stuck: look around"))
    assert metric.episodes_played == 12  # a new hint text: only the with-hints side is played
    assert [c.uplift for c in metric.calls][2:4] == [value, value]
    with pytest.raises(ValueError, match="coin"):
        metric.tasks_for("coin")


def test_compile_writes_a_loadable_program_used_by_the_stage(cfg, tiny_backend, tmp_path: Path) -> None:
    answers = [f"[[ ## hints ## ]]\n{HINT}\n\n[[ ## completed ## ]]", "[[ ## hints ## ]]\nthe agent looped\n"]
    lm = make_extractor_lm(ExtractorConfig(), ScriptedBackend(answers), "scripted-opt", cache_dir=tmp_path / "dspy")
    result = compile_extractor(cfg, [failure(1), failure(2)], lm, tiny_backend, tasks=2, samples=1)

    assert result.training_failures == 2 and result.path.parent == cfg.data_path / "prompts"
    assert result.path.name.startswith("extractor-") and result.path.suffix == ".json"
    assert [c.hints for c in result.calls] == [[HINT], []]
    assert result.episodes_played == 4  # 2 tasks x 1 sample, with and without the one valid hint
    kept = sum(c.uplift >= 0.01 for c in result.calls)
    assert result.demos == kept  # only a positive uplift makes a demo
    state = json.loads(result.path.read_text())
    assert len(state["extract"]["demos"]) == kept
    assert len(load_extractor(result.path).extract.demos) == kept

    # the stage extracts with the compiled program when hints.extractor.program is set
    hints_cfg = cfg.hints.model_copy(
        update={"extractor": cfg.hints.extractor.model_copy(update={"program": str(result.path)}), "curated_packs": []}
    )
    stage_lm = make_extractor_lm(
        ExtractorConfig(), ScriptedBackend([answers[0]]), "scripted-stage", cache_dir=tmp_path / "dspy2"
    )
    store = HintStore(hints_cfg, tmp_path / "store")
    out = extract_and_store([failure(3)], hints_cfg, store, stage_lm, "scripted/hints-v1", "run-1")
    assert out.extracted == 1
    assert store.list()[0].extractor == f"scripted/hints-v1+{result.path.stem}"

    missing = hints_cfg.model_copy(
        update={"extractor": hints_cfg.extractor.model_copy(update={"program": "nope.json"})}
    )
    with pytest.raises(FileNotFoundError, match="hints.extractor.program"):
        extract_and_store([failure(4)], missing, store, stage_lm, "x", "run-2")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a saved HintExtractor"):
        load_extractor(bad)


def test_compile_stays_within_its_budget_and_uses_contrastive_examples(cfg, tiny_backend, tmp_path: Path) -> None:
    from prompts.optimize import program_hash
    from r2w.contracts import SuccessReference
    from tasks.optimize import Budget

    answer = f"[[ ## hints ## ]]\n{HINT}\n\n[[ ## completed ## ]]"
    lm = make_extractor_lm(ExtractorConfig(), ScriptedBackend([answer] * 3), "scripted-b", cache_dir=tmp_path / "d1")
    one = compile_extractor(cfg, [failure(1), failure(2), failure(3)], lm, tiny_backend, tasks=2, budget=Budget(1))
    assert one.training_failures == 1 and len(one.calls) == 1 and one.stopped_by == ""
    assert one.program_hash == program_hash(one.path) and one.path.name == f"extractor-{one.program_hash}.json"

    # out of minutes before the first call: nothing is played, no demo, and the result says why
    lm = make_extractor_lm(ExtractorConfig(), ScriptedBackend([answer] * 2), "scripted-m", cache_dir=tmp_path / "d2")
    won = SuccessReference(source="gold", task_id="task-1", same_task=True, actions=["open fridge"], replies=["ok"])
    late = compile_extractor(cfg, [failure(1), failure(2)], lm, tiny_backend, tasks=2,
                             budget=Budget(max_minutes=0.0), references={"ep-1": won})  # fmt: skip
    assert late.stopped_by == "max_minutes" and late.episodes_played == 0 and late.demos == 0
    assert [c.skipped for c in late.calls] == ["max_minutes", "max_minutes"] and late.contrastive == 1

    # a program whose content no longer matches the hash in its name is refused
    tampered = tmp_path / late.path.name
    state = json.loads(late.path.read_text())
    state["extract"]["demos"] = [{"hints": "WHEN x: do y"}]
    tampered.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="does not match the hash in its name"):
        load_extractor(tampered)
