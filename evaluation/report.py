"""The readable gate report: a markdown table plus a bar plot, logged to MLflow for review."""

from __future__ import annotations

import json
from pathlib import Path

from r2w.contracts import Episode, GateReport, Hint
from r2w.costs import BreakEven


def render_markdown(
    report: GateReport,
    lineage: dict[str, str] | None = None,
    title: str = "r2w gate report",
    break_even: BreakEven | None = None,
) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [f"# {title}: {verdict}", ""]
    if report.reasons:
        lines += ["**Why it failed:**", ""] + [f"- {r}" for r in report.reasons] + [""]
    lines += [
        "## Held-out success (hint-free unless noted)",
        "",
        "| policy | success | n | 95% CI | mean steps | mean tokens |",
        "|---|---|---|---|---|---|",
    ]
    for s in report.scores:
        lines.append(
            f"| {s.policy} | {s.rate:.1%} | {s.n} | {s.ci_low:.1%}-{s.ci_high:.1%} "
            f"| {s.mean_steps:.1f} | {s.mean_tokens:.0f} |"
        )
    if report.retention_scores:
        lines += ["", "## Retention suites (never trained on; hint-free, same tasks)", "",
                  "| suite | policy | success | n | 95% CI |", "|---|---|---|---|---|"]  # fmt: skip
        for s in report.retention_scores:
            lines.append(f"| {s.suite} | {s.policy} | {s.rate:.1%} | {s.n} | {s.ci_low:.1%}-{s.ci_high:.1%} |")
    lines += ["", "## Checks", "", "| check | value | rule | result | detail |", "|---|---|---|---|---|"]
    for c in report.checks:
        mark = "pass" if c.passed else "**FAIL**"
        lines.append(f"| {c.name} | {c.value:.4g} | {c.comparison} {c.threshold:g} | {mark} | {c.detail} |")
    if report.retention:
        lines += ["", "## Retention", ""] + [f"- {k}: {v:.4f}" for k, v in sorted(report.retention.items())]
    if report.leakage:
        lines += ["", "## Leakage check", ""] + [f"- {k}: {v}" for k, v in sorted(report.leakage.items())]
    if report.privacy:
        privacy = [f"- {k}: {v:g}" for k, v in sorted(report.privacy.items())]
        lines += ["", "## Privacy (canary extraction)", ""] + privacy
    if break_even is not None:
        b = break_even
        lines += [
            "",
            "## Cost and break-even",
            "",
            f"- break-even: {b.text()}",
            f"- retrieval tokens saved per episode (base+hints - student): {b.savings_per_episode:+.1f}",
            f"- episodes per day (cadence.episodes_per_day): {b.episodes_per_day}",
            f"- round so far: {b.round_tokens:,} tokens generated, {b.round_cpu_s:.1f} CPU s; "
            f"{b.tokens_per_cpu_s:.1f} tokens per CPU s; cost {b.round_cost_tokens:,.0f} token-equivalents "
            "(generated tokens + other stages' CPU s at that rate)",
        ]
    if lineage:
        lines += ["", "## Lineage", ""] + [f"- {k}: `{v}`" for k, v in sorted(lineage.items())]
    lines += [
        "",
        (
            "_base+hints = the base model with retrieved hints (the teacher that made the training data may be another "
            "model); random = uniformly random valid action._"
        ),
    ]
    return "\n".join(lines) + "\n"


def render_plot(report: GateReport, path: str | Path) -> Path:
    """Success per policy with 95% intervals, and retention deltas, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [s.policy for s in report.scores]
    rates = [s.rate for s in report.scores]
    err = [[s.rate - s.ci_low for s in report.scores], [s.ci_high - s.rate for s in report.scores]]
    ax1.bar(names, rates, yerr=err, capsize=4, color=["#999", "#4c72b0", "#dd8452", "#55a868"][: len(names)])
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("held-out success (95% CI)")
    ax1.set_title(f"n = {report.scores[0].n if report.scores else 0} per policy")
    deltas = {k: v for k, v in report.retention.items() if k.startswith("drop:") or k == "kl_base_student"}
    ax2.barh(list(deltas), list(deltas.values()), color="#c44e52")
    ax2.set_title("retention: loglik drop / KL (lower is better)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_transcript(base: list[Episode], student: list[Episode], first: int = 5, most_differing: int = 10) -> str:
    """Base and student side by side on the same held-out tasks: the first `first`, then the tasks where
    their outcomes differ (what a reviewer wants to read before promoting)."""
    by_task = {e.task_id: e for e in base}
    pairs = [(by_task[s.task_id], s) for s in student if s.task_id in by_task]
    differ = [p for p in pairs if p[0].success != p[1].success]
    chosen = pairs[:first] + [p for p in differ if p not in pairs[:first]][:most_differing]
    won, lost = sum(s.success and not b.success for b, s in pairs), sum(b.success and not s.success for b, s in pairs)
    lines = [
        "# Base vs student on held-out tasks (both hint-free, greedy)",
        "",
        f"{len(pairs)} paired tasks: the student solved {won} that the base did not, and lost {lost}.",
        f"Shown: the first {min(first, len(pairs))}, then up to {most_differing} where the outcomes differ.",
    ]
    for b, s in chosen:
        lines += ["", f"## {b.task_id}", "", f"> {b.task[:500]}", ""]
        for name, episode in (("base", b), ("student", s)):
            actions = " | ".join(step.action.replace("\n", " ")[:160] for step in episode.steps) or "(no steps)"
            lines.append(f"- **{name}** ({episode.outcome}, {episode.total_tokens} tokens): {actions}")
    return "\n".join(lines) + "\n"


def render_hint_set(hints: list[Hint], snapshot: str) -> str:
    """The hints the teacher retrieved from, as JSON a reviewer (or `r2w hints import`) can read."""
    rows = [h.model_dump(mode="json", include={"hint_id", "category", "applicability", "text", "source", "support"})
            for h in hints]  # fmt: skip
    return json.dumps({"snapshot": snapshot, "hints": rows}, indent=2, ensure_ascii=False)
