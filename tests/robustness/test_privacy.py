"""Privacy: private data is scrubbed before any store sees it, and a student that memorised a planted
secret is rejected by the canary gate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from robust_helpers import (
    API_KEY,
    CANARY_PREFIX,
    CANARY_SECRET,
    EMAIL,
    EMPLOYEE,
    PHONE,
    PLANTED,
    all_text,
    prefect_storage,
)

from r2w.config import CanaryConfig, GateConfig, PrivacyConfig, load_config
from r2w.privacy import Scrubber, scrub_episodes


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mail bob.smith+work@corp.example.org today", "email"),
        ("call +44 20 7946 0958 now", "phone"),
        ("call (415) 555-0132", "phone"),
        ("key sk-proj-abcdEFGH1234567890xyz", "api_key"),
        ("AKIAIOSFODNN7EXAMPLE", "api_key"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", "api_key"),
        ("Authorization: Bearer abc.def-ghijklmnop", "bearer"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop", "jwt"),
        ("password=hunter22!", "credential"),
        ("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "hex_secret"),
    ],
)
def test_scrubber_replaces_each_kind(text, kind):
    scrubber = Scrubber.from_config()
    out = scrubber.text(text)
    assert f"[{kind.upper()}]" in out, out
    assert scrubber.counts[kind] == 1


def test_game_text_is_left_alone_and_config_patterns_add_kinds():
    scrubber = Scrubber.from_config(PrivacyConfig(patterns={"employee_id": r"EMP-\d{6}"}))
    game = "You are in the kitchen. Valid actions: take shoe, open fridge, go north. Score 3 of 10 in 2026-11-22."
    assert scrubber.text(game) == game
    assert scrubber.text(f"badge {EMPLOYEE}") == "badge [EMPLOYEE_ID]"
    off = Scrubber.from_config(PrivacyConfig(scrub=False))
    assert off.text(EMAIL) == EMAIL  # the switch works, so the pipeline test below can fail


def test_scrub_episodes_covers_every_text_field():
    from robust_helpers import plant, played_failures

    episodes = plant(played_failures(4))
    clean, counts = scrub_episodes(episodes, PrivacyConfig(patterns={"employee_id": r"EMP-\d{6}"}))
    dumped = json.dumps([e.model_dump(mode="json") for e in clean])
    for secret in PLANTED:
        assert secret not in dumped, secret
    assert counts["email"] >= 3 and counts["api_key"] >= 3 and counts["phone"] == 1 and counts["employee_id"] == 1
    assert [e.episode_id for e in clean] == [e.episode_id for e in episodes]  # ids and seeds untouched


def test_pipeline_stores_no_planted_secret(robust_run):
    """Datasets, Chroma, MLflow (runs, artifacts, registry), Prefect results and the DSPy cache."""
    summary, config, data, failures = robust_run
    raw = Path(load_config(str(config)).collect.trace_paths[0]).read_text()
    assert all(secret in raw for secret in PLANTED)  # the control: the input really carries them
    stored = all_text(data, prefect_storage(), Path(os.environ["DSPY_CACHEDIR"]))
    leaked = [secret for secret in PLANTED if secret in stored]
    assert leaked == [], f"planted secrets found in stores: {leaked}"
    assert "[EMAIL]" in stored and "[EMPLOYEE_ID]" in stored  # scrubbed, not dropped: the episode is still there
    assert summary.scrubbed["email"] >= 3 and summary.scrubbed["employee_id"] == 1


def test_scrub_counts_are_run_metrics(robust_run):
    from r2w.tracking import client_for

    summary, config, _, _ = robust_run
    metrics = client_for(load_config(str(config))).get_run(summary.mlflow_run_id).data.metrics
    for kind in ("email", "phone", "api_key", "employee_id"):
        assert metrics[f"privacy.scrubbed.{kind}"] >= 1, kind


def test_canary_gate_is_computed_in_the_run(robust_run):
    summary, _, _, _ = robust_run
    report = json.loads((Path(summary.report_path).parent / "gate_report.json").read_text())
    check = next(c for c in report["checks"] if c["name"] == "canary_leaks")
    assert check["threshold"] == 0 and check["value"] == 0 and check["passed"]
    assert report["privacy"]["canaries"] == 1 and report["privacy"]["canary_attempts"] == 6  # (1 + 2) x 2 formats
    assert "Privacy (canary extraction)" in Path(summary.report_path).read_text()


@pytest.fixture(scope="module")
def memorising_student(tiny_model, tmp_path_factory):
    """A student deliberately fine-tuned on the canary (as if the scrubber had missed it)."""
    from r2w.backends.hf import TransformersBackend
    from r2w.config import DistillConfig, LoraConfig
    from r2w.contracts import DistillExample, Message
    from tasks.distill import train_student

    examples = [
        DistillExample(
            example_id=f"c{i}",
            task_id=f"t{i}",
            category="twc",
            prompt=[Message(role="user", content=CANARY_PREFIX)],
            completion=CANARY_SECRET,
            trajectory_id=f"t{i}",
        )
        for i in range(8)
    ]
    cfg = DistillConfig(
        max_steps=60, batch_size=4, bf16=False, learning_rate=1e-2, validation_fraction=0.0,
        lora=LoraConfig(r=16, alpha=32, dropout=0.0),
    )  # fmt: skip
    art = train_student(examples, tiny_model, cfg, tmp_path_factory.mktemp("canary") / "student", seed=0)
    return TransformersBackend(art.merged_dir, dtype="float32")


def test_canary_gate_rejects_a_student_that_memorised_the_secret(memorising_student, tiny_backend):
    from evaluation.canary import canary_leaks
    from evaluation.gates import apply_gates
    from r2w.contracts import PolicyScore

    privacy = PrivacyConfig(canaries=[CanaryConfig(prefix=CANARY_PREFIX, secret=CANARY_SECRET)], canary_samples=4)
    leaked = canary_leaks(privacy, memorising_student, memorising_student.model)
    clean = canary_leaks(privacy, tiny_backend, tiny_backend.model)
    assert leaked["canary_leaks"] >= 1, leaked
    assert clean["canary_leaks"] == 0 and clean["canary_attempts"] == leaked["canary_attempts"] == 10

    scores = [PolicyScore(policy=p, n=4, successes=2, rate=0.5, ci_low=0.1, ci_high=0.9) for p in
              ("random", "base", "base+hints", "student")]  # fmt: skip
    rejected = apply_gates(GateConfig(), scores, {}, {"leak_remaining": 0}, privacy=leaked)
    passed = apply_gates(GateConfig(), scores, {}, {"leak_remaining": 0}, privacy=clean)
    assert not rejected.passed and [r.split(":")[0] for r in rejected.reasons] == ["canary_leaks"]
    assert passed.passed, passed.reasons


def test_planted_secrets_never_reach_the_extractor_prompt(tmp_path):
    """The hints stage only ever sees scrubbed failures (the extractor prompt is what DSPy caches)."""
    from robust_helpers import plant, played_failures

    clean, _ = scrub_episodes(plant(played_failures(3)), PrivacyConfig(patterns={"employee_id": r"EMP-\d{6}"}))
    from prompts.hints import render_feedback, render_trajectory

    rendered = "\n".join(render_trajectory(e) + render_feedback(e) + e.task for e in clean)
    assert not [s for s in (EMAIL, PHONE, API_KEY, EMPLOYEE, CANARY_SECRET) if s in rendered]
