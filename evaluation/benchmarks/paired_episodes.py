"""Paired per-seed comparison of two runs' evaluation episodes (e.g. the hints vs no-hints ablation).

    python -m evaluation.benchmarks.paired_episodes \
        .r2w-arith/datasets/eval-episodes/<id> .r2w-arith-nohints/datasets/eval-episodes/<id> --policy student

Across policies (a continual round's student against the ORIGINAL base, whose episodes live in round 1's run):

    python -m evaluation.benchmarks.paired_episodes <round-2 eval-episodes> <round-1 eval-episodes> \
        --policy student --policy-b base
"""

from __future__ import annotations

import functools

from evaluation.benchmarks import common
from evaluation.metrics import compare_paired, score_episodes
from r2w.contracts import Episode
from r2w.datasets import load_records


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("a", help="eval-episodes dataset folder of run A")
    parser.add_argument("b", help="eval-episodes dataset folder of run B")
    parser.add_argument("--policy", default="student", help="which policy's episodes to compare")
    parser.add_argument("--policy-b", default=None, help="run B's policy, when it differs from --policy")
    args = parser.parse_args(argv)
    policy_b = args.policy_b or args.policy
    a = policy_episodes(args.a, args.policy)
    b = policy_episodes(args.b, policy_b)
    c = compare_paired("a", a, "b", b)
    sa, sb = score_episodes("a", a), score_episodes("b", b)
    print(
        f"A ({args.policy}) {sa.successes}/{sa.n} = {sa.rate:.1%}   "
        f"B ({policy_b}) {sb.successes}/{sb.n} = {sb.rate:.1%}"
    )
    print(
        f"paired on {sum(c['table'].values())} seeds: {c['table']}; "
        f"A - B = {c['diff']:+.1%} ({c['ci_low']:+.1%}..{c['ci_high']:+.1%}), McNemar p={c['p_mcnemar']:.2g}"
    )
    return c


@functools.cache
def _stored(folder: str) -> list:
    """One read per dataset folder: A and B are often the same run (student vs base of one evaluation)."""
    return load_records(folder, Episode)


def policy_episodes(folder: str, policy: str) -> list:
    """POLICY's episodes of a stored eval-episodes dataset; a clear exit when it has none."""
    episodes = [e for e in _stored(folder) if e.policy == policy]
    if not episodes:
        raise SystemExit(f"no {policy!r} episodes in {folder}")
    return episodes


if __name__ == "__main__":
    main()
