import pytest

from evaluation.gates import apply_gates
from evaluation.metrics import wilson_interval
from evaluation.report import render_markdown
from r2w.config import GateConfig
from r2w.contracts import PolicyScore


def _score(policy: str, wins: int, n: int = 100) -> PolicyScore:
    lo, hi = wilson_interval(wins, n)
    return PolicyScore(policy=policy, n=n, successes=wins, rate=wins / n, ci_low=lo, ci_high=hi)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(23, 100)
    assert lo == pytest.approx(0.1584, abs=1e-3) and hi == pytest.approx(0.3215, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_gate_passes_and_fails_with_named_checks():
    scores = [_score("random", 38), _score("base", 23), _score("base+hints", 50), _score("student", 45)]
    retention = {"kl_base_student": 0.02, "drop:coin": 0.01}
    ok = apply_gates(GateConfig(min_gain_over_base=0.1, max_kl=0.1), scores, retention, {"leak_remaining": 0})
    assert ok.passed and not ok.reasons
    bad = apply_gates(GateConfig(min_gain_over_base=0.3, max_kl=0.01, max_retention_drop=0.005), scores, retention, {})
    failed = {c.name for c in bad.checks if not c.passed}
    assert not bad.passed and failed == {"gain_over_base", "kl_to_base", "retention_coin"}
    assert any("gain_over_base" in r for r in bad.reasons)
    md = render_markdown(bad)
    assert "FAILED" in md and "| gain_over_base |" in md and "**FAIL**" in md


def test_leakage_gate():
    scores = [_score("random", 1), _score("base", 1), _score("base+hints", 1), _score("student", 1)]
    report = apply_gates(GateConfig(min_gain_over_base=-1), scores, {}, {"leak_remaining": 2})
    assert not report.passed and [c.name for c in report.checks if not c.passed] == ["leakage"]


def test_gain_over_the_best_simple_baseline_counts_base_sampled():
    scores = [_score("random", 19), _score("base", 0), _score("base-sampled", 30), _score("base+hints", 50),
              _score("student", 35)]  # fmt: skip
    report = apply_gates(GateConfig(min_gain_over_best_baseline=0.10), scores, {}, {})
    check = next(c for c in report.checks if c.name == "gain_over_best_baseline")
    assert check.value == pytest.approx(0.05) and not check.passed  # vs base-sampled, the best of the three
    assert "base-sampled 0.300" in check.detail and not report.passed
    without = apply_gates(
        GateConfig(min_gain_over_best_baseline=0.10), [s for s in scores if s.policy != "base-sampled"], {}, {}
    )
    assert next(c for c in without.checks if c.name == "gain_over_best_baseline").value == pytest.approx(0.16)
