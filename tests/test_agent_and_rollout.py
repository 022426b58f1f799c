import pytest

from evaluation.environments import make_environment
from r2w.agent_prompt import build_messages, extract_hints_block, render_hints_block, strip_hints_block
from r2w.backends import SamplingParams
from r2w.config import EnvConfig
from r2w.contracts import Hint
from r2w.rollout import EpisodeState, LLMPolicy, RandomPolicy, map_to_valid_action, run_episodes

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


def _full_pass_logprob(backend, messages, reply: str) -> float:
    """Reference: one full forward pass over prompt + reply + end of turn, no cache reuse."""
    import torch

    tok = backend.tokenizer
    p_ids = tok(backend.render(messages), add_special_tokens=False)["input_ids"]
    r_ids = tok(reply, add_special_tokens=False)["input_ids"] + [backend.eos_id]
    ids = torch.tensor([p_ids + r_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(input_ids=ids).logits.float()[0, :-1], dim=-1)
    return float(logp[torch.arange(len(p_ids) - 1, ids.shape[1] - 1), ids[0, len(p_ids) :]].sum())


def test_scoring_with_a_shared_prompt_cache_equals_full_passes(tiny_backend):
    factory = make_environment(ENV)
    env = factory.make()
    text, obs = env.reset(factory.tasks("test", 1)[0])
    messages = build_messages(text, obs.text, obs.valid_actions, [])
    options = obs.valid_actions[:6]  # different lengths: exercises the padding of the continuations
    assert len({len(o) for o in options}) > 1
    [scored] = tiny_backend.score([messages], [options])
    expected = [_full_pass_logprob(tiny_backend, messages, o) for o in options]
    assert scored.logprobs == pytest.approx(expected, abs=1e-3)
    assert scored.prompt_tokens > 0 and all(n >= 2 for n in scored.choice_tokens)


def test_score_selection_picks_the_likeliest_valid_action(tiny_backend):
    factory = make_environment(ENV)
    tasks = factory.tasks("train", 2)
    greedy = LLMPolicy(tiny_backend, "tiny", SamplingParams(max_tokens=4, temperature=0.0), selection="score")
    episodes = run_episodes(factory, [(t, 0) for t in tasks], greedy, 3, batch_size=2)
    for step in (s for e in episodes for s in e.steps):
        [scored] = tiny_backend.score([step.prompt], [step.valid_actions])
        best = max(range(len(step.valid_actions)), key=scored.logprobs.__getitem__)
        assert step.action == step.valid_actions[best] and step.completion_tokens == scored.choice_tokens[best]
    # sampling draws in proportion to likelihood: over many samples, more than one action comes up; a draw is
    # keyed by the batch's jobs and step (rollout.draw_key), so the same sample of a task draws the same action
    sampled = LLMPolicy(tiny_backend, "tiny", SamplingParams(temperature=5.0, seed=1), selection="score")
    env = factory.make()
    text, obs = env.reset(tasks[0])
    picks = [sampled.act([EpisodeState(tasks[0], text, obs, sample_index=i)])[0].action for i in range(12)]
    assert len(set(picks)) > 1 and set(picks) <= set(obs.valid_actions)
    assert picks[3] == sampled.act([EpisodeState(tasks[0], text, obs, sample_index=3)])[0].action
    with pytest.raises(ValueError, match="action_selection"):
        LLMPolicy(tiny_backend, "tiny", SamplingParams(), selection="vote")
