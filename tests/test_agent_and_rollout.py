from evaluation.environments import make_environment
from prompts.agent import build_messages, extract_hints_block, render_hints_block, strip_hints_block
from r2w.backends import SamplingParams
from r2w.config import EnvConfig
from r2w.contracts import Hint
from r2w.rollout import LLMPolicy, RandomPolicy, map_to_valid_action, run_episodes

ENV = EnvConfig(game="twc", max_steps=8)


def _hint(text: str) -> Hint:
    return Hint(hint_id=Hint.make_id(text, "twc"), text=text, applicability="when holding {object}", category="twc")


def test_stripping_hints_gives_the_exact_base_prompt():
    args = ("Tidy up.", "You are in the kitchen.", ["look around", "open fridge"], [("look around", "A kitchen.")])
    block = render_hints_block([_hint("open {container} before putting things in it")])
    teacher = build_messages(*args, hints_block=block)
    assert teacher != build_messages(*args)
    assert strip_hints_block(teacher) == build_messages(*args)
    assert extract_hints_block(teacher) == block
    assert "open {container}" not in strip_hints_block(teacher)[0].content


def test_map_to_valid_action():
    valid = ["open fridge", "take apple", "look around"]
    assert map_to_valid_action("take apple.", valid) == "take apple"
    assert map_to_valid_action("open the fridge now", valid) == "open fridge"
    assert map_to_valid_action("", valid) in valid


def test_twx_random_policy_plays_real_games():
    factory = make_environment(ENV)
    tasks = factory.tasks("test", 6)
    assert {t.split for t in tasks} == {"test"} and len({t.seed for t in tasks}) == 6
    episodes = run_episodes(factory, [(t, 0) for t in tasks], RandomPolicy(0), ENV.max_steps, batch_size=3)
    assert len(episodes) == 6
    for ep in episodes:
        assert 1 <= len(ep.steps) <= ENV.max_steps
        assert all(s.action in s.valid_actions for s in ep.steps)
        assert ep.success == (ep.outcome == "success")


def test_constrained_llm_policy_only_emits_valid_actions(tiny_backend):
    factory = make_environment(ENV)
    tasks = factory.tasks("train", 3)
    policy = LLMPolicy(tiny_backend, "tiny", SamplingParams(max_tokens=4, temperature=1.0), constrained=True)
    episodes = run_episodes(factory, [(t, 0) for t in tasks], policy, 4, batch_size=3)
    steps = [s for e in episodes for s in e.steps]
    assert steps and all(s.response in s.valid_actions for s in steps)  # verbatim, not just mapped
    assert all(s.prompt_tokens > 0 and s.completion_tokens > 0 for s in steps)
