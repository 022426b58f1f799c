"""Both benchmark adapters, for real: all 8 TextWorldExpress games and reasoning-gym families."""

from __future__ import annotations

import random

import pytest

from evaluation.environments import make_environment
from evaluation.environments.reasoning_gym import SPLIT_SEEDS, extract_answer
from evaluation.environments.twx import GAMES
from r2w.agent_prompt import SYSTEM_ANSWER
from r2w.backends import SamplingParams
from r2w.config import EnvConfig
from r2w.rollout import LLMPolicy, RandomPolicy, run_episodes

RG = EnvConfig(
    name="reasoning_gym",
    families=["basic_arithmetic", "leg_counting"],
    family_kwargs={"basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
)


@pytest.mark.parametrize("game", GAMES)
def test_every_twx_game_resets_and_steps(game):
    factory = make_environment(EnvConfig(game=game, max_steps=5))
    (task,) = factory.tasks("test", 1)
    env = factory.make()
    try:
        text, obs = env.reset(task)
        assert text and obs.text and obs.valid_actions and not obs.done
        assert env.gold_actions(), "TWX gives a gold path for every game"
        new = env.step(random.Random(0).choice(obs.valid_actions))
        assert new.text and isinstance(new.done, bool)
    finally:
        env.close()


def test_twx_folds_are_the_benchmarks_own_and_bad_params_are_named():
    factory = make_environment(EnvConfig(game="coin"))
    train, test = factory.tasks("train", 5), factory.tasks("test", 5)
    assert not {t.seed for t in train} & {t.seed for t in test}
    with pytest.raises(ValueError, match="env.params .*numItemsToPutAway"):
        make_environment(EnvConfig(game="coin", params="numItemsToPutAway=1")).make()
    with pytest.raises(ValueError, match="env.game"):
        make_environment(EnvConfig(game="zork"))


def test_reasoning_gym_tasks_splits_and_verifier():
    factory = make_environment(RG)
    tasks = factory.tasks("test", 4)
    assert [t.category for t in tasks] == ["basic_arithmetic", "leg_counting"] * 2
    assert [t.seed for t in tasks] == [20000, 20000, 20001, 20001]
    for split, (lo, hi) in SPLIT_SEEDS.items():
        assert all(lo <= t.seed < hi for t in factory.tasks(split, 6))
    env = factory.make()
    question, obs = env.reset(tasks[0])
    assert obs.valid_actions == [] and obs.text == question and question.count("+") + question.count("-") >= 1
    (gold,) = env.gold_actions()
    right = env.step(f"<answer>{gold}</answer>")
    assert right.done and right.success and right.score == 1.0
    env.reset(tasks[0])
    wrong = env.step(str(int(gold) + 1))
    assert wrong.done and not wrong.success and gold in wrong.text  # the verdict names the expected answer
    again, _ = env.reset(tasks[0])
    assert again == question  # a seed is the same item every time


def test_reasoning_gym_config_errors_name_the_field():
    with pytest.raises(ValueError, match="env.family_kwargs: \\['lcm'\\] not in env.families"):
        EnvConfig(name="reasoning_gym", families=["gcd"], family_kwargs={"lcm": {}})
    with pytest.raises(ValueError, match="env.families: unknown"):
        make_environment(EnvConfig(name="reasoning_gym", families=["no_such_family"]))
    with pytest.raises(ValueError, match="env.family_kwargs.leg_counting"):
        make_environment(
            EnvConfig(name="reasoning_gym", families=["leg_counting"], family_kwargs={"leg_counting": {"x": 1}})
        )


def test_extract_answer():
    assert extract_answer("thinking... <answer> 42 </answer>") == "42"
    assert extract_answer("42.\nbecause") == "42"
    assert extract_answer("The answer is 21.") == extract_answer("Answer: 21") == "21"
    assert extract_answer('"ylimafbus"') == "ylimafbus"
    assert extract_answer("") == ""


def test_reasoning_gym_free_text_rollout_on_tiny_model(tiny_backend):
    factory = make_environment(RG)
    tasks = factory.tasks("dev", 4)
    policy = LLMPolicy(tiny_backend, "base", SamplingParams(max_tokens=4, temperature=1.0), answer_max_tokens=10)
    episodes = run_episodes(factory, [(t, 0) for t in tasks], policy, max_steps=5, batch_size=4, config_hash="c0ffee")
    assert [e.category for e in episodes] == [t.category for t in tasks]
    for ep in episodes:
        (step,) = ep.steps  # single-step tasks end after the answer
        assert step.valid_actions == [] and step.action == step.response.strip()  # free text, not mapped
        assert step.prompt[0].content == SYSTEM_ANSWER and "Valid actions" not in step.prompt[1].content
        assert 0 < step.completion_tokens <= 10 and step.prompt_tokens > 0
        assert ep.outcome in ("success", "failure") and ep.config_hash == "c0ffee"
        assert ep.model == tiny_backend.identity and ep.policy == "base"
    baseline = run_episodes(factory, [(t, 0) for t in tasks], RandomPolicy(0), max_steps=5)
    assert all(e.steps[0].action == "" and not e.success for e in baseline)


def test_random_budget_counts_successes_within_each_budget():
    """No twc game is solvable in one step (take, then put); with 15 steps random play often wins."""
    from evaluation.benchmarks.random_budget import main

    rows = main(["--games", "twc", "--n", "20", "--budgets", "1,15"])
    twc = rows["twc"]
    assert 2 <= twc["gold_mean"] <= twc["gold_max"] <= 15
    one, fifteen = twc["random"][1], twc["random"][15]
    assert one["n"] == fifteen["n"] == 20
    assert one["successes"] == 0 < fifteen["successes"]  # the budget is applied, not ignored


class _FirstPutPolicy:
    """Scripted twc player: the first `put` on offer, else the first `take` (repeats a wrong put forever)."""

    name = "first-put"

    def act(self, states):
        from r2w.rollout import Decision

        picks = []
        for s in states:
            puts = [a for a in s.obs.valid_actions if a.startswith("put ")]
            takes = [a for a in s.obs.valid_actions if a.startswith("take ")]
            action = (puts or takes or s.obs.valid_actions)[0]
            picks.append(Decision(action=action, response=action, prompt=[]))
        return picks


def _repeated_losses(episode) -> int:
    """How often an action that already lowered the score in this episode is played again."""
    lost, repeats = set(), 0
    for step in episode.steps:
        repeats += step.action in lost
        if step.reward < 0:
            lost.add(step.action)
    return repeats


def test_avoid_losing_actions_removes_score_losing_actions_for_every_policy():
    twc = EnvConfig(game="twc", params="numLocations=1,numItemsToPutAway=1,includeDoors=0,limitInventorySize=0")
    factory = make_environment(twc)
    jobs = [(t, 0) for t in factory.tasks("test", 12)]
    plain = run_episodes(factory, jobs, _FirstPutPolicy(), max_steps=8, batch_size=4)
    ruled = run_episodes(factory, jobs, _FirstPutPolicy(), max_steps=8, batch_size=4, avoid_losing_actions=True)
    assert sum(_repeated_losses(e) for e in plain) > 0, "the scripted player must repeat a wrong put without the rule"
    assert sum(_repeated_losses(e) for e in ruled) == 0
    for ep in ruled:  # the recorded valid actions are what the policy saw: the losing ones are gone
        lost = set()
        for step in ep.steps:
            assert not lost & set(step.valid_actions)
            lost |= {step.action} if step.reward < 0 else set()
    assert sum(e.success for e in ruled) > sum(e.success for e in plain)
    rand = run_episodes(factory, jobs, RandomPolicy(0), max_steps=8, batch_size=4, avoid_losing_actions=True)
    assert sum(_repeated_losses(e) for e in rand) == 0


def test_without_actions_never_empties_the_action_list():
    from r2w.environment import Observation
    from r2w.rollout import without_actions

    obs = Observation(text="t", valid_actions=["a", "b"])
    assert without_actions(obs, {"a"}).valid_actions == ["b"]
    assert without_actions(obs, {"a", "b"}).valid_actions == ["a", "b"]  # nothing left: keep them all
    assert without_actions(obs, set()) is obs


def test_closed_twx_environments_are_reused_and_released():
    """A closed environment goes back to its process's idle pool; the next make() of the same kind takes it
    and plays a new task from scratch; another kind never gets it; release_idle() stops the JVMs."""
    from evaluation.environments import release_idle
    from evaluation.environments.twx import _IDLE, TWXFactory
    from r2w.environment import TaskSpec

    release_idle()
    factory = TWXFactory("twc", None, 6)
    first = factory.make()
    _, before = first.reset(TaskSpec("twx", "twc", "test", 1))
    first.step(before.valid_actions[0])
    first.close()
    again = factory.make()
    assert again is first  # no new JVM
    text, obs = again.reset(TaskSpec("twx", "twc", "test", 1))
    assert obs == before and text  # the task starts over, nothing of the earlier steps left
    other = TWXFactory("twc", None, 9).make()  # another step limit: another kind
    assert other is not first
    again.close()
    other.close()
    assert sum(len(idle) for idle in _IDLE.values()) == 2
    release_idle()
    assert not any(_IDLE.values())
