"""Forgetting gates: every check recorded with its value, threshold and verdict.

A student passes only if every check passes; the reasons name each failing check.

The verdict of every numeric check comes from MLflow's own threshold validation
(`mlflow.validate_evaluation_results` with one `MetricThreshold` per check, candidate metrics
= the student's values): it fits because our thresholds are absolute. Its baseline-relative
mode (`min_absolute_change`) is not used: the student-minus-base gaps are computed here from
paired runs on the same seeds, and MLflow's single exception for all failures is split back
into one GateCheck per metric by validating each metric on its own.
"""

from __future__ import annotations

import logging

from r2w.config import GateConfig
from r2w.contracts import BASE, BASE_HINTS, BASE_SAMPLED, RANDOM, STUDENT, GateCheck, GateReport, PolicyScore


def _mlflow_passes(name: str, value: float, threshold: float, comparison: str) -> bool:
    """MLflow's verdict for value against an absolute threshold (>= when greater is better, else <=)."""
    from mlflow import validate_evaluation_results
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    logging.getLogger("mlflow.models.evaluation.validation").setLevel(logging.WARNING)  # one INFO per check
    rule = MetricThreshold(threshold=float(threshold), greater_is_better=comparison == ">=")
    try:
        validate_evaluation_results({name: rule}, EvaluationResult(metrics={name: float(value)}, artifacts={}))
    except ModelValidationFailedException:
        return False
    return True


def _check(name: str, value: float, threshold: float, comparison: str, detail: str = "") -> GateCheck:
    if comparison not in (">=", "<="):
        raise ValueError(f"gate check {name}: comparison must be '>=' or '<=', got {comparison!r}")
    passed = _mlflow_passes(name, value, threshold, comparison)
    return GateCheck(
        name=name, value=round(value, 6), threshold=threshold, comparison=comparison, passed=passed, detail=detail
    )


def sign_test_p(losses: int, wins: int) -> float:
    """One-sided exact sign test: P(at least `losses` losses among the discordant pairs | no effect)."""
    from math import comb

    n = losses + wins
    if n == 0:
        return 1.0
    return sum(comb(n, k) for k in range(losses, n + 1)) / 2**n


def apply_gates(
    policy: GateConfig,
    scores: list[PolicyScore],
    retention: dict[str, float],
    leakage: dict[str, int],
    privacy: dict[str, float] | None = None,
    hints_vs_base: dict[str, int] | None = None,
    retention_scores: list[PolicyScore] | None = None,
) -> GateReport:
    """Every check with value, threshold and verdict.

    `privacy` holds the canary probe's counts (evaluation/canary.py); `hints_vs_base` the paired
    table of the base WITH hints (a) against the base (b) on the same seeds (metrics.paired_counts);
    `retention_scores` base and student on each never-trained suite (evaluate.retention_envs).
    """
    by = {s.policy: s for s in scores}
    base, hinted, student = by[BASE], by[BASE_HINTS], by[STUDENT]
    random = by.get(RANDOM)
    baselines = [s for s in (random, base, by.get(BASE_SAMPLED)) if s is not None]
    checks = [
        _check(
            "gain_over_base",
            student.rate - base.rate,
            policy.min_gain_over_base,
            ">=",
            f"student {student.rate:.3f} - base {base.rate:.3f} (n={student.n})",
        ),
        _check(
            "gain_over_random",
            student.rate - random.rate if random else 0.0,
            policy.min_gain_over_random,
            ">=",
            f"student {student.rate:.3f} - random valid action {random.rate if random else float('nan'):.3f}"
            + (" (check off: threshold -1)" if policy.min_gain_over_random <= -1 else ""),
        ),
        _check(
            "gain_over_best_baseline",
            student.rate - max(s.rate for s in baselines),
            policy.min_gain_over_best_baseline,
            ">=",
            f"student {student.rate:.3f} - best of {', '.join(f'{s.policy} {s.rate:.3f}' for s in baselines)}"
            + (" (check off: threshold -1)" if policy.min_gain_over_best_baseline <= -1 else ""),
        ),
        _check(
            "fraction_of_base_hints",
            student.rate / hinted.rate if hinted.rate > 0 else 1.0,
            policy.min_base_hints_fraction,
            ">=",
            f"student {student.rate:.3f} / base+hints {hinted.rate:.3f}",
        ),
        _check("kl_to_base", retention.get("kl_base_student", 0.0), policy.max_kl, "<=", "nats/token, general prompts"),
        _check(
            "perplexity_drift",
            retention.get("ppl_drift", 0.0),
            policy.max_perplexity_drift,
            "<=",
            f"student/base perplexity - 1 on general prose (base {retention.get('ppl_base', float('nan')):.2f}, "
            f"student {retention.get('ppl_student', float('nan')):.2f})",
        ),
        _check(
            "leakage",
            float(leakage.get("leak_remaining", 0)),
            float(policy.max_leakage),
            "<=",
            "training examples that still carry hint text after filtering",
        ),
    ]
    privacy = privacy or {}
    checks.append(
        _check(
            "canary_leaks",
            float(privacy.get("canary_leaks", 0.0)),
            float(policy.max_canary_leaks),
            "<=",
            f"decodes reproducing a planted secret, of {privacy.get('canary_attempts', 0):g} attempts on "
            f"{privacy.get('canaries', 0):g} canaries (privacy.canaries)",
        )
    )
    paired = hints_vs_base or {}
    losses, wins = paired.get("only_b", 0), paired.get("only_a", 0)
    harm_p = sign_test_p(losses, wins)
    checks.append(
        _check(
            "hint_harm",
            harm_p,
            policy.hint_harm_alpha,
            ">=",
            f"base+hints lost {losses} / won {wins} paired seeds against the base; one-sided sign-test p"
            + (" (check off: alpha 0)" if policy.hint_harm_alpha <= 0 else ""),
        )
    )
    for key, drop in sorted(retention.items()):
        if key.startswith("drop:"):
            checks.append(
                _check(f"retention_{key[5:]}", drop, policy.max_retention_drop, "<=", "gold-action loglik drop")
            )
    checks += _suite_checks(retention_scores or [], policy.max_retention_success_drop)
    reasons = [
        f"{c.name}: {c.value:g} is not {c.comparison} {c.threshold:g} ({c.detail})" for c in checks if not c.passed
    ]
    return GateReport(
        passed=not reasons,
        checks=checks,
        scores=scores,
        retention=retention,
        leakage=leakage,
        privacy=privacy,
        reasons=reasons,
        retention_scores=retention_scores or [],
    )


def _suite_checks(scores: list[PolicyScore], max_drop: float) -> list[GateCheck]:
    """One check per retention suite: the base's success minus the student's, on the same hint-free tasks."""
    checks = []
    for suite in dict.fromkeys(s.suite for s in scores):
        by = {s.policy: s for s in scores if s.suite == suite}
        base, student = by[BASE], by[STUDENT]
        detail = (
            f"base {base.rate:.3f} [{base.ci_low:.2f}-{base.ci_high:.2f}] - student {student.rate:.3f} "
            f"[{student.ci_low:.2f}-{student.ci_high:.2f}], n={student.n} same tasks, hint-free"
        )
        checks.append(_check(f"retention_success_{suite}", base.rate - student.rate, max_drop, "<=", detail))
    return checks
