"""Hint k: the teacher's single-sample success with its top-k retrieved hints, k = 0 (no hints) .. K, same seeds.

The teach stage retrieves `hints.k` hints once at episode start; more hints are more guidance but a longer
prompt for a small model. This plays the base model at the teacher's temperature on the first `--n` test
seeds once per k, with the hint store of the config's data dir, and pairs every k against k = 0 (the base
sampled: the hints' value) and against the configured k. Best-of-n from the teach stage's own stored
attempts is `--teacher-episodes` (pass@n, unbiased, per training task).

Command (repo root, venv active; ~4-8 min per k for 200 twc episodes with vLLM on a 2-core CPU):

    python -m evaluation.benchmarks.hint_k --config tidy6 --k 0,1,3,5 --n 200 \\
        --teacher-episodes .r2w-tidy6/datasets/teacher-episodes/<id> --out .r2w/exp/hint_k.json
"""

from __future__ import annotations

from collections import defaultdict
from math import comb

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from evaluation.metrics import compare_paired, score_episodes
from r2w.contracts import Episode
from r2w.datasets import load_records
from r2w.hintstore import HintStore
from r2w.rollout import agent_policy


def pass_at_n(episodes: list) -> dict:
    """Unbiased pass@n over tasks (Chen et al. 2021) for n = 1, 2, 4, ... up to the attempts per task."""
    attempts: dict[str, list[bool]] = defaultdict(list)
    for e in episodes:
        attempts[e.task_id].append(e.success)
    sizes = {len(v) for v in attempts.values()}
    if len(sizes) != 1:
        raise ValueError(f"teacher episodes: tasks have different attempt counts {sorted(sizes)}; expected one")
    total = sizes.pop()
    ns = [n for n in (1, 2, 4, 8, 16, 32) if n <= total]
    rates = {
        n: sum(1 - comb(total - sum(v), n) / comb(total, n) for v in attempts.values()) / len(attempts) for n in ns
    }
    return {"tasks": len(attempts), "attempts_per_task": total, "pass_at": rates}


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__, config="tidy6", n=200, backend=True, out=common.JSON_OUT)
    parser.add_argument("--k", default="0,1,3,5", help="comma list of hints per prompt (0 = no hints block)")
    parser.add_argument("--teacher-episodes", default=None, help="teach stage's stored attempts: pass@n")
    args = parser.parse_args(argv)
    ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    if not ks or ks[0] < 0:
        raise SystemExit(f"--k {args.k!r}: expected a comma list of integers >= 0")
    cfg = common.load(args.config, args.set)

    factory = make_environment(cfg.env)
    tasks = factory.tasks("test", args.n)
    store = HintStore(cfg.hints, cfg.data_path)
    backend = common.backend(cfg, cfg.models.base, args.backend)
    episodes, seconds = {}, {}
    for k in ks:
        k_cfg = common.variant(cfg, "hints", k=k)
        policy = agent_policy(k_cfg, backend, f"teacher-k{k}", cfg.teach.temperature)
        retrieve = store.retrieve if k else None
        episodes[k], seconds[f"k={k}"] = common.timed(
            common.play, k_cfg, factory, tasks, policy, f"teacher k={k}", retrieve=retrieve
        )
    backend.close()
    scores = {f"k={k}": score_episodes(f"teacher k={k}", e).model_dump() for k, e in episodes.items()}
    # every k against no hints (the hints' value), then against the configured k (is it the right one?)
    pairs = [(k, 0) for k in ks if k and 0 in episodes]
    pairs += [(k, cfg.hints.k) for k in ks if cfg.hints.k in episodes and k not in (0, cfg.hints.k)]
    comparisons = [compare_paired(f"teacher k={a}", episodes[a], f"teacher k={b}", episodes[b]) for a, b in pairs]
    result = {
        "meta": {
            "config": args.config,
            "overrides": args.set,
            "n": args.n,
            "configured_k": cfg.hints.k,
            "temperature": cfg.teach.temperature,
            "hint_snapshot": store.snapshot_id(),
            "active_hints": len(store.list(status="active")),
            # audit: did retrieval fill the prompt? (k=0 must show 0; k>0 every episode, if hints exist)
            "episodes_with_hints": {f"k={k}": sum(bool(e.hint_ids) for e in eps) for k, eps in episodes.items()},
        },
        "scores": scores,
        "comparisons": comparisons,
        "seconds": seconds,
    }
    if args.teacher_episodes:
        result["best_of_n"] = pass_at_n(load_records(args.teacher_episodes, Episode))
    return common.report(result, render(result), args.out)


def render(result: dict) -> str:
    meta = result["meta"]
    header = (
        f"n = {meta['n']} test seeds, one sample each at temperature {meta['temperature']}, "
        f"{meta['active_hints']} active hints (configured k = {meta['configured_k']})"
    )
    lines = common.tables(header, result["scores"], result["comparisons"])
    if best := result.get("best_of_n"):
        rates = ", ".join(f"pass@{n} {r:.1%}" for n, r in best["pass_at"].items())
        lines += ["", f"teach stage, {best['tasks']} training tasks x {best['attempts_per_task']} attempts: {rates}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
