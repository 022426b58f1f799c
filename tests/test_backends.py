"""The transformers backend honours every sampling parameter the other backends take.

The vLLM engine and server backends are checked against the same expectations in
tests/test_vllm_server.py (marked `vllm`).
"""

from __future__ import annotations

import pytest

from r2w.backends import SamplingParams, make_backend
from r2w.contracts import Message

ACTIONS = ["open fridge", "close fridge", "take apple", "put apple in fridge", "look around"]


def _prompt(text: str = "You are in the kitchen. The fridge is closed.") -> list[Message]:
    return [
        Message(role="system", content="You are an agent playing a text game."),
        Message(role="user", content=f"Observation: {text}\nValid actions: {', '.join(ACTIONS)}\nNext action:"),
    ]


def test_n_samples_and_token_accounting(tiny_backend):
    prompts = [_prompt(), _prompt("You are in the bedroom.")]
    out = tiny_backend.generate(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=6))
    assert len(out) == 2
    for prompt, comp in zip(prompts, out, strict=True):
        assert len(comp.texts) == 3 and len(comp.completion_tokens) == 3
        rendered = tiny_backend.render(prompt)
        assert comp.prompt_tokens == len(tiny_backend.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert all(1 <= n <= 6 for n in comp.completion_tokens)


def test_greedy_is_deterministic_and_temperature_samples_vary(tiny_backend):
    greedy = tiny_backend.generate([_prompt()], SamplingParams(n=3, temperature=0.0, max_tokens=8))[0]
    assert len(set(greedy.texts)) == 1
    hot = tiny_backend.generate([_prompt()], SamplingParams(n=8, temperature=3.0, max_tokens=8))[0]
    assert len(set(hot.texts)) > 1, "temperature sampling returned 8 identical samples"


def test_choice_constraint_and_exact_token_counts(tiny_backend):
    out = tiny_backend.generate(
        [_prompt(), _prompt("The apple is on the table.")],
        SamplingParams(n=8, temperature=2.0, max_tokens=2),  # max_tokens is raised to fit the longest action
        choices=[ACTIONS, ACTIONS[:2]],
    )
    assert all(t in ACTIONS for t in out[0].texts)
    assert all(t in ACTIONS[:2] for t in out[1].texts)
    assert len(set(out[0].texts)) > 1, "the constraint should leave the choice to the model, not force one action"
    tok = tiny_backend.tokenizer
    for comp in out:
        for text, n in zip(comp.texts, comp.completion_tokens, strict=True):
            assert n == len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # canonical tokens + end-of-turn


def test_stop_strings_cut_text_and_generation(tiny_backend):
    hot = SamplingParams(n=8, temperature=2.0, max_tokens=24)
    free = tiny_backend.generate([_prompt()], hot)[0]
    assert sum(" " in t for t in free.texts) >= 4, f"random replies should mostly contain spaces: {free.texts}"
    stopped = tiny_backend.generate([_prompt()], SamplingParams(n=8, temperature=2.0, max_tokens=24, stop=(" ",)))[0]
    assert all(" " not in t for t in stopped.texts), stopped.texts
    assert sum(stopped.completion_tokens) < sum(free.completion_tokens)


def test_make_backend_errors_name_the_setting(tiny_model):
    with pytest.raises(ValueError, match="models.backend"):
        make_backend("bogus", tiny_model)
    with pytest.raises(ValueError, match="teacher_url"):
        make_backend("openai", tiny_model, url="localhost:1/v1")


def test_unreachable_server_is_a_clear_error(tiny_model):
    from r2w.backends.openai_server import ServerError
    from r2w.backends.vllm_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError, match="cannot reach"):
        make_backend("auto", tiny_model, url=url, max_retries=1)
