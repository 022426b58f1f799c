"""Retention suites through the environment seam: whole never-trained environments, played hint-free by base
and student on the same test tasks, scored with n and a 95% interval, and checked by the forgetting gate."""

from __future__ import annotations

import pytest

from evaluation.gates import apply_gates
from evaluation.report import render_markdown
from evaluation.retention import play_retention_suites, suite_metrics
from r2w.config import load_config
from r2w.contracts import BASE, BASE_HINTS, STUDENT, PolicyScore

DESK = "evaluation.environments.examples.helpdesk:HelpDesk"


def config(tmp_path, env: dict, suites: list):
    overrides = {"data_dir": str(tmp_path), "env": env, "evaluate": {"retention_envs": suites}}
    overrides["agent"] = {"answer_max_new_tokens": 8}
    return load_config("test", overrides)


def test_suites_are_named_from_builtin_names_and_import_paths(tmp_path):
    suites = ["twx", {"name": "reasoning_gym", "families": ["leg_counting"]},
              {"name": "bfcl", "options": {"category": "multi_turn_base"}},
              {"name": DESK, "options": {"max_orders": 2}, "label": "desk", "tasks": 3}]  # fmt: skip
    cfg = config(tmp_path, {"name": "twx"}, suites)
    assert [e.suite for e in cfg.evaluate.retention_envs] == [
        "twx:twc",
        "rg:leg_counting",
        "bfcl:multi_turn_base",
        "desk",
    ]
    assert cfg.evaluate.retention_envs[3].options == {"max_orders": 2} and cfg.evaluate.retention_envs[3].tasks == 3
    with pytest.raises(ValueError, match=r"suites \['twx:twc'\] appear twice"):
        config(tmp_path, {"name": "twx"}, ["twx", {"name": "twx", "max_steps": 3}])
    with pytest.raises(ValueError, match="evaluate.retention_envs: bfcl:nope: bfcl"):
        play_retention_suites(
            config(tmp_path, {"name": "twx"}, [{"name": "bfcl", "options": {"category": "nope"}}]), 0, 0
        )


def main_scores(rate: float = 0.5) -> list[PolicyScore]:
    return [
        PolicyScore(policy=p, n=4, successes=2, rate=rate, ci_low=0.1, ci_high=0.9) for p in (BASE, BASE_HINTS, STUDENT)
    ]


def gate_with(cfg, scores: list[PolicyScore]):
    return apply_gates(cfg.gate, main_scores(), suite_metrics(scores), {"leak_remaining": 0}, retention_scores=scores)


@pytest.mark.parametrize(
    ("trained", "suites", "names"),
    [
        (
            {"name": "bfcl", "options": {"category": "simple_python"}, "max_steps": 1},
            [
                {"name": "twx", "game": "coin", "params": "numLocations=1", "tasks": 3},
                {"name": "reasoning_gym", "families": ["leg_counting"], "tasks": 3},
            ],  # fmt: skip
            ["twx:coin", "rg:leg_counting"],
        ),
        (
            {"name": "twx"},
            [
                {"name": "bfcl", "options": {"category": "simple_python"}, "max_steps": 1, "tasks": 2},
                {"name": DESK, "options": {"max_orders": 2}, "label": "desk", "max_steps": 2, "tasks": 2},
            ],
            ["bfcl:simple_python", "desk"],
        ),
    ],
)
def test_the_gate_computes_and_reports_every_suite_and_a_drop_fails_it(tmp_path, tiny_backend, trained, suites, names):
    cfg = config(tmp_path, trained, suites)
    scores = play_retention_suites(cfg, tiny_backend, tiny_backend)  # the student is the base: no drop
    assert [(s.suite, s.policy) for s in scores] == [(n, p) for n in names for p in (BASE, STUDENT)]
    assert all(s.n == e["tasks"] for s, e in zip(scores, [e for e in suites for _ in (0, 1)], strict=True))
    assert all(0 <= s.ci_low <= s.rate <= s.ci_high <= 1 and s.ci_high > 0 for s in scores)
    report = gate_with(cfg, scores)
    checks = {c.name: c for c in report.checks}
    assert all(checks[f"retention_success_{n}"].passed and checks[f"retention_success_{n}"].value == 0 for n in names)
    markdown = render_markdown(report)
    assert all(f"| {n} | {STUDENT} |" in markdown for n in names) and "Retention suites" in markdown
    planted = [s.model_copy(update={"rate": 0.0, "successes": 0}) if s.policy == STUDENT and s.suite == names[-1]
               else s.model_copy(update={"rate": 1.0, "successes": s.n}) for s in scores]  # fmt: skip
    failed = gate_with(cfg, planted)
    assert not failed.passed and len(failed.reasons) == 1
    assert failed.reasons[0].startswith(f"retention_success_{names[-1]}: 1 is not <= 0.15")
    assert f"n={planted[-1].n} same tasks" in failed.reasons[0]
    assert suite_metrics(planted)[f"success_drop:{names[-1]}"] == 1.0
