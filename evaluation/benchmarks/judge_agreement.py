"""Judge agreement: how often an LLM judge's "keep" matches the real verifier, where ground truth exists.

The teacher's best-of-n attempts at BFCL tasks (whose environment verifier, BFCL's AST checker, is exact)
are judged the way `verify.kind: judge` judges them (r2w/verifiers.py: RULER-style, all n attempts of one
task in one prompt, a 0..1 score each). Reported against the environment's verdict: precision and recall of
"judge keeps", each with n and a Wilson 95% interval, for three keep rules (score >= threshold; the
top-1 of each task if it reaches the threshold; the top-1 whatever its score), and the base rate: the
precision of a judge that keeps everything, and the expected precision of a random pick per task.
Malformed judge replies keep nothing and are counted. `summarize` recomputes every figure from the JSON.

The environment's feedback is cut from every attempt before judging (BFCL answers a call with "Correct:
..." or the mismatch): the judge sees the task, the tools and the calls, as it would with no simulator.

Attempts come from a stored teacher-episodes dataset (`--episodes`, e.g. a BFCL run's data dir), or the
teacher plays `--tasks` train tasks `--samples` times here (hint-free, at teach.temperature). The judge is
`--model` (local), or a served one with `--set verify.judge_url=... --set verify.api_key_env=NAME`:

    python -m evaluation.benchmarks.judge_agreement --config bfcl --set data_dir=.r2w \\
        --set models.backend=vllm --episodes .r2w-bfcl/datasets/teacher-episodes/<hash> \\
        --tasks 50 --samples 4 --out judge_agreement.json
"""

from __future__ import annotations

import random
import time

from evaluation.benchmarks.common import JSON_OUT, backend, load, parser, report
from evaluation.environments import make_environment
from evaluation.metrics import wilson_interval
from r2w import rollout
from r2w.contracts import Episode
from r2w.datasets import load_records
from r2w.verifiers import JudgeVerifier, group_by_task, keep_flags, make_verifier


def blind(episode: Episode) -> Episode:
    """The attempt without the environment's answers (they state the verdict) and with no verdict on it."""
    steps = [s.model_copy(update={"tool_results": []}) for s in episode.steps]
    return episode.model_copy(update={"steps": steps, "success": False, "score": 0.0, "outcome": ""})


def pick_groups(episodes: list[Episode], tasks: int, samples: int, seed: int) -> list[list[Episode]]:
    """`tasks` task groups (seeded sample) of exactly `samples` attempts each."""
    groups = [g[:samples] for g in group_by_task(episodes) if len(g) >= samples]
    random.Random(seed).shuffle(groups)
    return groups[:tasks]


def agreement(truth: list[bool], kept: list[bool]) -> dict:
    """Precision and recall of `kept` against `truth`, with n and Wilson 95% intervals."""
    tp = sum(t and k for t, k in zip(truth, kept, strict=True))
    n_kept, n_true = sum(kept), sum(truth)
    p_lo, p_hi = wilson_interval(tp, n_kept)
    r_lo, r_hi = wilson_interval(tp, n_true)
    return {
        "kept": n_kept,
        "true_positives": tp,
        "precision": tp / n_kept if n_kept else 0.0,
        "precision_ci": [p_lo, p_hi],
        "recall": tp / n_true if n_true else 0.0,
        "recall_ci": [r_lo, r_hi],
        "positives": n_true,
    }


def judge_groups(verifier: JudgeVerifier, groups: list[list[Episode]], threshold: float) -> dict:
    """The judge's scores for every group (environment feedback hidden), and their agreement with the environment."""
    blinded = [[blind(e) for e in g] for g in groups]
    started = time.perf_counter()
    verdicts = verifier.verify_groups(blinded)
    seconds = time.perf_counter() - started
    detail = [{"task_id": g[0].task_id, "truth": [e.success for e in g], "scores": [v.score for v in vs],
               "problem": vs[0].problem} for g, vs in zip(groups, verdicts, strict=True)]  # fmt: skip
    result = {"judge": verifier.label, **summarize(detail, threshold), "malformed_examples": verifier.problems[:5]}
    return result | {"judge_seconds": round(seconds, 1), "groups": detail}


def summarize(detail: list[dict], threshold: float) -> dict:
    """Every reported figure from the per-task detail alone (truth, judge scores, problem), so a stored JSON can
    be re-summarized. Rules: score >= threshold; the top-1 of a task if it reaches the threshold; the top-1 of
    a task whatever its score (the judge's ranking alone). A malformed reply keeps nothing under any rule."""
    truth = [t for d in detail for t in d["truth"]]
    rules = {"keep_threshold": (threshold, 0), "keep_top1": (threshold, 1), "keep_top1_any_score": (0.0, 1)}
    kept: dict[str, list[bool]] = {name: [] for name in rules}
    picks: list[int] = []
    for d in detail:
        for name, (at_least, top) in rules.items():
            kept[name] += [False] * len(d["truth"]) if d["problem"] else keep_flags(d["scores"], at_least, top)
        if not d["problem"]:
            picks.append(keep_flags(d["scores"], 0.0, 1).index(True))
    scored = [(t, s) for d in detail if not d["problem"] for t, s in zip(d["truth"], d["scores"], strict=True)]
    lo, hi = wilson_interval(sum(truth), len(truth))
    samples = len(detail[0]["truth"]) if detail else 0
    return {
        "tasks": len(detail),
        "attempts": len(truth),
        "samples": samples,
        "threshold": threshold,
        "base_rate": {"successes": sum(truth), "n": len(truth), "rate": sum(truth) / len(truth), "ci": [lo, hi]},
        "malformed_groups": sum(bool(d["problem"]) for d in detail),
        **{name: agreement(truth, flags) for name, flags in kept.items()},
        "top1_position": {str(i + 1): picks.count(i) for i in range(samples)},
        "mean_score": {
            "env_success": _mean([s for t, s in scored if t]),
            "env_failure": _mean([s for t, s in scored if not t]),
        },  # fmt: skip
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def render(r: dict) -> str:
    b = r["base_rate"]
    lines = [
        f"judge {r['judge']} on {r['tasks']} tasks x {r['samples']} attempts ({r['attempts']}), "
        f"{r['judge_seconds']} s; malformed replies: {r['malformed_groups']}/{r['tasks']} tasks",
        f"base rate (precision of keep-everything): {b['successes']}/{b['n']} = {b['rate']:.1%} "
        f"({b['ci'][0]:.1%}-{b['ci'][1]:.1%})",
        "| rule | kept | precision (95% CI) | recall (95% CI) |",
        "|---|---:|---|---|",
    ]
    for name in ("keep_threshold", "keep_top1", "keep_top1_any_score"):
        a = r[name]
        at_least = "" if name.endswith("any_score") else f" (>= {r['threshold']})"
        lines.append(
            f"| {name}{at_least} | {a['kept']} | {a['true_positives']}/{a['kept']} = {a['precision']:.1%} "
            f"({a['precision_ci'][0]:.1%}-{a['precision_ci'][1]:.1%}) | {a['true_positives']}/{a['positives']} = "
            f"{a['recall']:.1%} ({a['recall_ci'][0]:.1%}-{a['recall_ci'][1]:.1%}) |"
        )
    lines.append(f"top-1 pick by attempt position: {r['top1_position']}; mean judge score: {r['mean_score']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, config="bfcl", model="smollm2", model_help="the judge: smollm2, tiny or a folder", out=JSON_OUT)
    p.add_argument("--episodes", default=None, help="a stored teacher-episodes dataset folder (else the teacher plays)")
    p.add_argument("--tasks", type=int, default=50, help="tasks judged")
    p.add_argument("--samples", type=int, default=4, help="attempts per task (n of best-of-n)")
    p.add_argument("--threshold", type=float, default=0.5, help="keep an attempt whose judge score reaches this")
    p.add_argument("--seed", type=int, default=0, help="which tasks of a stored dataset are sampled")
    args = p.parse_args(argv)
    cfg = load(args.config, args.set)
    judge_cfg = cfg.verify.model_copy(update={"kind": "judge", "keep_threshold": args.threshold})
    local = None  # the local model: the teacher when it plays here, the judge unless verify.judge_url is set
    if not (args.episodes and judge_cfg.judge_url):
        local = backend(cfg, args.model, seed=cfg.runtime.seed)
    try:
        if args.episodes:
            episodes = load_records(args.episodes, Episode)
        else:
            factory = make_environment(cfg.env)
            policy = rollout.agent_policy(cfg, local, "teacher", cfg.teach.temperature, n=1)  # type: ignore[arg-type]
            tasks = factory.tasks("train", args.tasks)
            episodes = rollout.play(cfg, factory, tasks, policy, "teacher", samples=args.samples)
        groups = pick_groups(episodes, args.tasks, args.samples, args.seed)
        verifier = make_verifier(judge_cfg, local)
        try:
            result = judge_groups(verifier, groups, args.threshold)  # type: ignore[arg-type]
        finally:
            verifier.close()
    finally:
        if local is not None:
            local.close()
    result["source"] = args.episodes or f"teacher played {cfg.env.name} here"
    return report(result, render(result), args.out)


if __name__ == "__main__":
    main()
