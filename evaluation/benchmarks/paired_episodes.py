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

    from evaluation.metrics import compare_paired, score_episodes
    from r2w.contracts import Episode
    from r2w.datasets import load_records

    a = [e for e in load_records(args.a, Episode) if e.policy == args.policy]
    b = [e for e in load_records(args.b, Episode) if e.policy == args.policy]
    if not a or not b:
        raise SystemExit(f"no {args.policy!r} episodes in {args.a if not a else args.b}")
    c = compare_paired("a", a, "b", b)
    sa, sb = score_episodes("a", a), score_episodes("b", b)
    print(f"A {sa.successes}/{sa.n} = {sa.rate:.1%}   B {sb.successes}/{sb.n} = {sb.rate:.1%}")
    print(
        f"paired on {sum(c['table'].values())} seeds: {c['table']}; "
        f"A - B = {c['diff']:+.1%} ({c['ci_low']:+.1%}..{c['ci_high']:+.1%}), McNemar p={c['p_mcnemar']:.2g}"
    )
    return c


if __name__ == "__main__":
    main()
