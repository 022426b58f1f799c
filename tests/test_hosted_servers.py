"""Hosted teachers and extractors (issue 23.4): model name, key from an env var, bounded retries, no key stored.

The server is `FakeOpenAIServer` (tests/fake_openai.py), a real HTTP server on loopback speaking the OpenAI
chat API, named a fake because no hosted model can be reached from here. It records what it received and can
answer 429/503 first, so the retry path runs over real sockets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from r2w.backends import SamplingParams, make_backend
from r2w.backends.openai_server import OpenAIServerBackend, ServerError
from r2w.config import ConfigError, load_config
from r2w.contracts import Message
from tests.fake_openai import FakeOpenAIServer
from tests.robustness.robust_helpers import all_text, prefect_storage

PLANTED_KEY = "sk-r2w-planted-Zq8vW3xYt6"
EXTRACTOR_HINT = "WHEN a {container} is closed: open the {container} before putting anything in it"


def hosted_answer(messages: list[dict]) -> str:
    """Extractor requests (DSPy's chat adapter: `[[ ## field ## ]]` markers) get a hint in that format;
    agent requests get an action."""
    if "[[ ## " in json.dumps(messages):
        return f"[[ ## hints ## ]]\n{EXTRACTOR_HINT}\n\n[[ ## completed ## ]]"
    return "look around"


@pytest.fixture
def server():
    fake = FakeOpenAIServer(hosted_answer, model="hosted-listed-model")
    yield fake
    fake.close()


def _ask(backend: OpenAIServerBackend) -> str:
    messages = [Message(role="user", content="hello")]
    return backend.generate([messages], SamplingParams(max_tokens=4))[0].texts[0]


def test_rate_limited_requests_are_retried_with_the_key_as_bearer_only(server, monkeypatch):
    server.fail_first = 2  # two 429s, then an answer
    monkeypatch.setenv("R2W_TEST_TEACHER_KEY", PLANTED_KEY)
    backend = make_backend(
        "transformers", "unused", url=server.url, server_model="big-teacher", api_key_env="R2W_TEST_TEACHER_KEY"
    )
    assert _ask(backend) == "look around"
    assert len(server.requests) == 3  # 2 retried 429s + the answer
    assert {r.auth for r in server.requests} == {f"Bearer {PLANTED_KEY}"}
    assert {r.body["model"] for r in server.requests} == {"big-teacher"}  # the configured name, not a guess
    assert PLANTED_KEY not in backend.identity and PLANTED_KEY not in repr(backend.recipe)  # recipes go to workers


def test_the_last_failed_retry_raises_a_clear_error_without_the_key():
    fake = FakeOpenAIServer(hosted_answer, fail_first=100, fail_status=503, echo_key_in_errors=True)
    try:
        backend = OpenAIServerBackend(fake.url, model="m", api_key=PLANTED_KEY, max_retries=2, max_backoff_s=0.01)
        with pytest.raises(ServerError) as err:
            _ask(backend)
        assert len(fake.requests) == 3  # bounded: 1 + max_retries
        message = str(err.value)
        assert "HTTP 503" in message and "after 3 attempts" in message
        assert PLANTED_KEY not in message and "[REDACTED]" in message  # the server echoed it; redacted
    finally:
        fake.close()


def test_a_client_error_is_not_retried(server):
    server.fail_first, server.fail_status = 1, 400
    backend = OpenAIServerBackend(server.url, model="m", max_retries=5)
    with pytest.raises(ServerError, match="HTTP 400 \\(not retried\\)"):
        _ask(backend)
    assert len(server.requests) == 1


def test_a_key_pasted_into_the_env_name_field_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as err:
        load_config("test", {"models.teacher_api_key_env": PLANTED_KEY})
    assert "NAME of an environment variable" in str(err.value) and PLANTED_KEY not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config("test", {"hints.extractor.api_key_env": "sk-abc-123"})
    assert "sk-abc-123" not in str(err.value)


def test_an_unset_key_variable_names_the_variable(server, monkeypatch):
    from r2w.backends import agent_backends

    monkeypatch.delenv("R2W_UNSET_KEY_VAR", raising=False)
    cfg = load_config("test", {"models.teacher_url": server.url, "models.teacher_api_key_env": "R2W_UNSET_KEY_VAR"})
    with pytest.raises(ValueError, match="environment variable R2W_UNSET_KEY_VAR is not set"):
        agent_backends(cfg)


def test_a_run_with_a_hosted_teacher_and_extractor_never_stores_the_key(server, tmp_path, monkeypatch, capfd):
    """The whole flow with both hosted: every stored file (datasets, Chroma, MLflow, Prefect, DSPy cache) and
    the console are searched for the planted key; the control shows the key did reach the server."""
    from flows.retrain import retrain

    key_env = "R2W_TEST_HOSTED_KEY"
    monkeypatch.setenv(key_env, PLANTED_KEY)
    server.fail_first = 1  # the first request is rate limited: the run rides it out
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "models.teacher_url": server.url,
        "models.teacher_model": "big-teacher",
        "models.teacher_api_key_env": key_env,
        "models.teacher_usd_per_1m_tokens": 2.5,
        "hints.extractor": {"lm": "openai", "url": server.url, "model": "big-extractor", "api_key_env": key_env},
        "hints.curated_packs": [],
        "registry.model_name": "r2w-hosted-test",
    }
    summary = retrain(config="test", overrides=overrides)

    models = {r.body.get("model") for r in server.requests}
    assert {"big-teacher", "big-extractor"} <= models  # both roles went to the hosted server
    assert {r.auth for r in server.requests} == {f"Bearer {PLANTED_KEY}"}
    assert summary.hints_extracted >= 1  # the hosted extractor's hint was parsed and stored
    teach = summary.costs["teach"]
    assert teach.tokens > 0 and teach.usd == pytest.approx(teach.tokens * 2.5 / 1e6)

    stored = all_text(tmp_path / "data", prefect_storage(), Path(os.environ["DSPY_CACHEDIR"]))
    assert "R2W_TEST_HOSTED_KEY" in stored  # the variable's name is recorded (MLflow params) ...
    assert PLANTED_KEY not in stored  # ... its value nowhere
    out, err = capfd.readouterr()
    assert PLANTED_KEY not in out + err


def test_a_malformed_teacher_url_is_refused_without_echoing_a_key_in_it():
    with pytest.raises(ValueError, match="models.teacher_url: expected http") as err:
        OpenAIServerBackend(f"ftp://host/v1?key={PLANTED_KEY}")
    assert PLANTED_KEY not in str(err.value)
