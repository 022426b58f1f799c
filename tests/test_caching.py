"""Cache keys follow what a stage reads; retries happen only for transient errors."""

from __future__ import annotations

import pytest
from prefect import flow, task

from r2w.caching import retry_transient, stage_cache
from r2w.config import load_config


def _key(policy, **params) -> str:
    fn = next(p for p in policy.policies if hasattr(p, "cache_key_fn")).cache_key_fn
    return fn(None, params)


def test_stage_key_depends_only_on_the_sections_it_reads():
    policy = stage_cache("collect", "env")
    base = load_config("test")
    same = _key(policy, cfg=base, n=1)
    assert _key(policy, cfg=load_config("test", {"gate": {"max_kl": 0.0}}), n=1) == same
    assert _key(policy, cfg=load_config("test", {"collect": {"episodes": 9}}), n=1) != same
    assert _key(policy, cfg=base, n=2) != same


def test_ignored_parameters_do_not_enter_the_key():
    policy = stage_cache(ignore=("run_id",))
    assert _key(policy, x=1, run_id="a") == _key(policy, x=1, run_id="b")


def test_retries_only_transient_errors():
    calls = {"flaky": 0, "bug": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("server not ready")
        return "ok"

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def bug() -> None:
        calls["bug"] += 1
        raise ValueError("bad input")

    @flow
    def run() -> str:
        return flaky()

    @flow
    def run_bug() -> None:
        bug()

    assert run() == "ok" and calls["flaky"] == 2
    with pytest.raises(ValueError):
        run_bug()
    assert calls["bug"] == 1
