"""Paired per-seed comparison of two runs' evaluation episodes (e.g. the hints vs no-hints ablation).

    python -m evaluation.benchmarks.paired_episodes \
        .r2w-arith/datasets/eval-episodes/<id> .r2w-arith-nohints/datasets/eval-episodes/<id> --policy student
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="eval-episodes dataset folder of run A")
    parser.add_argument("b", help="eval-episodes dataset folder of run B")
    parser.add_argument("--policy", default="student", help="which policy's episodes to compare")
    args = parser.parse_args(argv)

    from evaluation.metrics import mcnemar_p, paired_counts, paired_difference, score_episodes
    from r2w.contracts import Episode
    from r2w.datasets import load_records

    a = [e for e in load_records(args.a, Episode) if e.policy == args.policy]
    b = [e for e in load_records(args.b, Episode) if e.policy == args.policy]
    if not a or not b:
        raise SystemExit(f"no {args.policy!r} episodes in {args.a if not a else args.b}")
    table = paired_counts(a, b)
    diff, low, high = paired_difference(table)
    sa, sb = score_episodes("a", a), score_episodes("b", b)
    p = mcnemar_p(table["only_a"], table["only_b"])
    print(f"A {sa.successes}/{sa.n} = {sa.rate:.1%}   B {sb.successes}/{sb.n} = {sb.rate:.1%}")
    print(
        f"paired on {sum(table.values())} seeds: {table}; "
        f"A - B = {diff:+.1%} ({low:+.1%}..{high:+.1%}), McNemar p={p:.2g}"
    )
    return {"table": table, "diff": diff, "ci": (low, high), "p": p}


if __name__ == "__main__":
    main()
