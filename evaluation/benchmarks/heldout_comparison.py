"""Held-out comparison for issue 10: every policy on the same >=200 test seeds, paired per seed.

Policies (same prompt template, same constrained valid-action choice, same seeds):
  random           uniformly random valid action
  base greedy      the base model, no hints, temperature 0
  base sampled     the base model, no hints, one sample at the teacher's temperature
  teacher greedy   the base model WITH the run's retrieved hints (k from the config), temperature 0
  teacher sampled  the same, one sample at the teacher's temperature (the teacher's single-sample rate)
  student          the trained student, hint-free, temperature 0
Retention in success points: base greedy vs student greedy on never-trained suites
(`evaluate.retention_games` TWX games and `evaluate.retention_families` reasoning-gym families).
Per policy: success with n and a 95% Wilson interval, mean steps and tokens per episode (prompt +
completion); per comparison: the paired table, the difference with a 95% interval and an exact
McNemar p-value. Base and student each run in one vLLM engine (the student from its merged folder,
which r2w verified against the trained adapter), else on transformers.

    python -m evaluation.benchmarks.heldout_comparison --config peckingorder \
        --student .r2w-po/students/<id>/merged --n 200 --out evaluation/results/peckingorder.json
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from evaluation.metrics import compare_paired, score_episodes
from r2w.config import EnvConfig
from r2w.datasets import save_records
from r2w.hintstore import HintStore
from r2w.rollout import RandomPolicy, agent_policy


def _score(name: str, episodes) -> dict:
    return score_episodes(name, episodes).model_dump()


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(
        __doc__, config="demo", n=200, n_help="held-out test seeds per suite", backend=True, out=common.JSON_OUT
    )
    parser.add_argument("--student", required=True, help="merged student model folder (or a HF model folder)")
    parser.add_argument("--offset", type=int, default=0, help="first test seed index")
    parser.add_argument("--retention-n", type=int, default=None, help="seeds per retention suite (default --n)")
    parser.add_argument(
        "--retention-max-steps",
        type=int,
        default=15,
        help="step budget of the TWX retention games (TWX's usual 15; independent of the trained game's budget)",
    )
    parser.add_argument("--label", default="", help="row label for the experiment log")
    parser.add_argument(
        "--save-episodes",
        action="store_true",
        help="store every policy's episodes as a `heldout-episodes` dataset (for paired_episodes against a run)",
    )
    args = parser.parse_args(argv)
    cfg = common.load(args.config, args.set)

    started = time.perf_counter()
    factory = make_environment(cfg.env)
    tasks = factory.tasks("test", args.n, offset=args.offset)
    temp = cfg.teach.temperature
    store = HintStore(cfg.hints, cfg.data_path)

    def play(backend, name: str, temperature: float, with_hints: bool = False, suite=None):
        run_cfg, fac, suite_tasks = suite or (cfg, factory, tasks)
        policy = agent_policy(cfg, backend, name, temperature)
        return common.play(run_cfg, fac, suite_tasks, policy, name, retrieve=store.retrieve if with_hints else None)

    # success points need a suite the base can win: '' (TWX's large defaults) -> r2w's small per-game params
    retention_suites = [
        (
            g,
            EnvConfig(
                name="twx", game=g, params=cfg.evaluate.retention_params or None, max_steps=args.retention_max_steps
            ),
        )
        for g in cfg.evaluate.retention_games
    ] + [(f"rg:{f}", EnvConfig(name="reasoning_gym", families=[f])) for f in cfg.evaluate.retention_families]
    rn = args.retention_n or args.n
    retention_jobs = {}
    for key, env_cfg in retention_suites:
        fac = make_environment(env_cfg)
        retention_jobs[key] = (cfg.model_copy(update={"env": env_cfg}), fac, fac.tasks("test", rn))

    eps: dict[str, list] = {}
    eps["random"] = common.play(cfg, factory, tasks, RandomPolicy(cfg.runtime.seed), "random")
    base = common.backend(cfg, cfg.models.base, args.backend)
    eps["base greedy"] = play(base, "base", 0.0)
    eps["base sampled"] = play(base, "base-sampled", temp)
    eps["teacher greedy"] = play(base, "teacher", 0.0, with_hints=True)
    eps["teacher sampled"] = play(base, "teacher-sampled", temp, with_hints=True)
    retention: dict[str, dict] = {}
    for key, suite in retention_jobs.items():
        retention[key] = {"base": play(base, f"retention {key} base", 0.0, suite=suite)}
    base.close()
    student = common.backend(cfg, args.student, args.backend)
    eps["student"] = play(student, "student", 0.0)
    for key, suite in retention_jobs.items():
        retention[key]["student"] = play(student, f"retention {key} student", 0.0, suite=suite)

    scores = {name: _score(name, e) for name, e in eps.items()}
    comparisons = [
        compare_paired("student", eps["student"], other, eps[other]) for other in eps if other != "student"
    ] + [compare_paired("teacher sampled", eps["teacher sampled"], "base sampled", eps["base sampled"])]
    retention_rows = {
        key: {
            "base": _score("base", pair["base"]),
            "student": _score("student", pair["student"]),
            "paired": compare_paired("student", pair["student"], "base", pair["base"]),
        }
        for key, pair in retention.items()
    }
    episodes_path = None
    if args.save_episodes:
        every = [e for name in eps for e in eps[name]]
        ref = save_records(every, cfg.data_path / "datasets", "heldout-episodes", {"config_hash": cfg.hash})
        episodes_path = str(ref.path)
    result = {
        "meta": {
            "episodes": episodes_path,
            "label": args.label,
            "config": args.config,
            "overrides": args.set,
            "env": cfg.env.model_dump(mode="json"),
            "student": str(args.student),
            "n": args.n,
            "retention_max_steps": args.retention_max_steps,
            "hint_snapshot": store.snapshot_id(),
            "hints_k": cfg.hints.k,
            "teacher_temperature": temp,
            "minutes": (time.perf_counter() - started) / 60,
            "date": datetime.now(UTC).isoformat(),
        },
        "scores": scores,
        "comparisons": comparisons,
        "retention": retention_rows,
    }
    return common.report(result, render(result), args.out)


def render(result: dict) -> str:
    """Markdown tables: scores, paired comparisons, retention in points."""
    meta = result["meta"]
    lines = common.tables(
        f"### {meta['label'] or meta['config']} (n={meta['n']} test seeds)", result["scores"], result["comparisons"]
    )
    lines += ["", "| retention suite | base | student | drop (points, 95% CI) |", "|---|---|---|---|"]
    for key, r in result["retention"].items():
        b, s, c = r["base"], r["student"], r["paired"]
        lines.append(
            f"| {key} | {b['rate']:.1%} ({b['successes']}/{b['n']}) | {s['rate']:.1%} ({s['successes']}/{s['n']}) "
            f"| {-c['diff']:+.1%} ({-c['ci_high']:+.1%}..{-c['ci_low']:+.1%}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
