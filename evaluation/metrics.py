"""Success rates that cannot mislead on their own: always with n and a 95% Wilson interval."""

from __future__ import annotations

import math

from r2w.contracts import Episode, PolicyScore


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sane at 0/n and n/n, unlike the normal approximation."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def score_episodes(policy: str, episodes: list[Episode]) -> PolicyScore:
    n = len(episodes)
    wins = sum(e.success for e in episodes)
    low, high = wilson_interval(wins, n)
    return PolicyScore(
        policy=policy,
        n=n,
        successes=wins,
        rate=wins / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        mean_steps=sum(len(e.steps) for e in episodes) / n if n else 0.0,
        mean_tokens=sum(e.total_tokens for e in episodes) / n if n else 0.0,
    )


def paired_counts(a: list[Episode], b: list[Episode]) -> dict[str, int]:
    """Per-seed paired outcome table (a vs b on the same task ids): only discordant pairs carry signal."""
    by_task = {e.task_id: e.success for e in a}
    table = {"both": 0, "only_a": 0, "only_b": 0, "neither": 0}
    for e in b:
        if e.task_id not in by_task:
            continue
        sa, sb = by_task[e.task_id], e.success
        key = "both" if sa and sb else "only_a" if sa else "only_b" if sb else "neither"
        table[key] += 1
    return table


def format_score(s: PolicyScore) -> str:
    interval = f"95% CI {s.ci_low:.0%}-{s.ci_high:.0%}"
    return f"{s.rate:.0%} ({s.successes}/{s.n}, {interval}), {s.mean_tokens:.0f} tokens/episode"


def score_metrics(scores: list[PolicyScore]) -> dict[str, float]:
    """MLflow metrics of held-out scores: the rate with its sample size (an interval can be rebuilt) and tokens."""
    out: dict[str, float] = {}
    for s in scores:
        key = s.policy.replace("+", "_")  # MLflow metric names take no '+': base+hints -> eval.base_hints.*
        out |= {f"eval.{key}.success": s.rate, f"eval.{key}.n": s.n}
        out[f"eval.{key}.mean_tokens"] = s.mean_tokens
    return out


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs of a paired per-seed comparison."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(table: dict[str, int], z: float = 1.96) -> tuple[float, float, float]:
    """Rate(a) - rate(b) on the same seeds with a 95% interval (Wald on paired differences).

    Paired seeds cancel the per-seed difficulty that two independent intervals would double count.
    """
    n = sum(table.values())
    if n == 0:
        return 0.0, -1.0, 1.0
    a, b = table["only_a"] / n, table["only_b"] / n
    diff = a - b
    var = (a + b - diff * diff) / n
    half = z * math.sqrt(max(var, 0.0))
    return diff, max(-1.0, diff - half), min(1.0, diff + half)


def compare_paired(a_name: str, a: list[Episode], b_name: str, b: list[Episode]) -> dict:
    """Everything a paired per-seed comparison reports: the table, a - b with its 95% interval, McNemar p."""
    table = paired_counts(a, b)
    diff, low, high = paired_difference(table)
    p = mcnemar_p(table["only_a"], table["only_b"])
    return {"a": a_name, "b": b_name, "table": table, "diff": diff, "ci_low": low, "ci_high": high, "p_mcnemar": p}
