"""Skill or format? Strict success vs 'the correct answer appears anywhere in the reply' per policy.

For free-text (reasoning-gym) evaluation episodes: a policy whose strict success is low but whose
replies contain the right answer somewhere was failing on format; one whose replies do not contain it
lacked the skill. Reads an `eval-episodes` dataset of a run (verified by its content hash) and
recomputes each task's gold answer from the same reasoning-gym generator.

    python -m evaluation.benchmarks.answer_format --config arithmetic --episodes .r2w-arith/datasets/eval-episodes/<id>
"""

from __future__ import annotations

import re
from collections import defaultdict

from evaluation.benchmarks import common
from evaluation.environments import TaskSpec, make_environment
from r2w.config import load_config
from r2w.contracts import Episode
from r2w.datasets import load_records


def contains_answer(reply: str, gold: str) -> bool:
    """The gold answer as a whole token of the reply (numbers: not a digit of a longer number)."""
    return re.search(rf"(?<![\w.]){re.escape(gold.strip())}(?![\w]|\.\d)", reply or "") is not None


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = common.parser(__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--episodes", required=True, help="an eval-episodes dataset folder")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    common.setup(cfg.data_dir)  # offline settings and caches under the config's data dir, before environments load
    factory = make_environment(cfg.env)
    env = factory.make()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "strict": 0, "contains": 0})
    for ep in load_records(args.episodes, Episode):
        if not ep.steps:
            continue
        env.reset(TaskSpec(env=ep.env, category=ep.category, split=ep.split, seed=ep.seed))
        gold = env.gold_actions()[0]
        c = counts[ep.policy]
        c["n"] += 1
        c["strict"] += ep.success
        c["contains"] += contains_answer(ep.steps[0].response, gold)
    print("| policy | n | strict success | correct answer anywhere in the reply |\n|---|---:|---|---|")
    out = {}
    for policy, c in counts.items():
        out[policy] = {k: c[k] / c["n"] for k in ("strict", "contains")} | {"n": c["n"]}
        print(
            f"| {policy} | {c['n']} | {c['strict']}/{c['n']} = {c['strict'] / c['n']:.1%} "
            f"| {c['contains']}/{c['n']} = {c['contains'] / c['n']:.1%} |"
        )
    return out


if __name__ == "__main__":
    main()
