"""How much does blind search win per step budget? Random-valid-action success and gold-path length per TWX game.

Picking a step budget by data: where a wrong move does not end the episode (twc, coin), random play
succeeds more the more steps it gets, so a generous budget measures persistence, not skill. This prints,
per game, the gold path's length and the share of held-out seeds a random policy solves within each
budget (one random episode per seed, run to the largest budget; Wilson 95% intervals).

    python -m evaluation.benchmarks.random_budget --games twc,coin --n 300 --budgets 4,6,8,15
"""

from __future__ import annotations

import statistics

from evaluation.benchmarks import common
from evaluation.environments.twx import TWXFactory, resolve_params
from evaluation.metrics import wilson_interval
from r2w.config import EnvConfig, R2WConfig
from r2w.rollout import RandomPolicy


def first_success_steps(game: str, params: str | None, n: int, max_budget: int, seed: int) -> tuple[list, list]:
    """(gold-path lengths, step of success or None) for the first n TEST seeds of a game.

    The random episodes are r2w's own `RandomPolicy` rollouts, run once to the largest budget: an episode
    that succeeded at step k counts for every budget >= k.
    """
    factory = TWXFactory(game, params, max_budget)
    tasks = factory.tasks("test", n)
    env = factory.make()
    try:
        gold_lengths = []
        for task in tasks:
            env.reset(task)
            gold_lengths.append(len(env.gold_actions()))
    finally:
        env.close()
    cfg = R2WConfig(env=EnvConfig(game=game, params=params, max_steps=max_budget))  # play's step budget
    episodes = common.play(cfg, factory, tasks, RandomPolicy(seed), f"{game} random", batch_size=16)
    return gold_lengths, [len(e.steps) if e.success else None for e in episodes]


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = common.parser(__doc__, n=300, n_help="test seeds per game")
    parser.add_argument("--games", default="twc,coin", help="comma-separated TWX game types")
    parser.add_argument("--params", default=None, help="TWX params for every game (default: r2w's per-game)")
    parser.add_argument("--budgets", default="4,5,6,8,10,15", help="comma-separated step budgets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    budgets = sorted(int(b) for b in args.budgets.split(","))
    rows: dict[str, dict] = {}
    print("| game | params | gold steps mean (max) | " + " | ".join(f"random @{b}" for b in budgets) + " |")
    print("|---|---|---|" + "---|" * len(budgets))
    for game in [g.strip() for g in args.games.split(",") if g.strip()]:
        params = resolve_params(game, args.params)
        gold, solved = first_success_steps(game, params, args.n, budgets[-1], args.seed)
        rates = {}
        for b in budgets:
            k = sum(1 for s in solved if s is not None and s <= b)
            low, high = wilson_interval(k, len(solved))
            rates[b] = {"successes": k, "n": len(solved), "rate": k / len(solved), "ci": [low, high]}
        rows[game] = {"params": params, "gold_mean": statistics.mean(gold), "gold_max": max(gold), "random": rates}
        cells = " | ".join(f"{r['rate']:.1%} ({r['ci'][0]:.0%}-{r['ci'][1]:.0%})" for r in rates.values())
        print(f"| {game} | {params or '(TWX defaults)'} | {statistics.mean(gold):.1f} ({max(gold)}) | {cells} |")
    return rows


if __name__ == "__main__":
    main()
