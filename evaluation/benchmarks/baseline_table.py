"""Baseline: the base SmolLM2 agent per TextWorldExpress game type and per reasoning-gym family.

The agent is the pipeline's own (`r2w.rollout.agent_policy` on the demo config: greedy (and with
`--sampled` one temperature-1 sample),
replies constrained to the valid actions, 3 history turns; free-text answers of up to
`agent.answer_max_new_tokens` tokens on reasoning-gym). Each suite is played on the first
`--n` seeds of the benchmark's TEST split (TWX's own test fold; reasoning-gym seeds 20000+).
Beside it, the random-valid-action policy on the first `--random-n` test seeds of the same suite
(reasoning-gym has no action set: the random policy answers the empty string, so ~0 by design).
Every rate has n and a 95% Wilson interval. Rows are printed as they finish; `--out` keeps JSON.

Command (repo root, venv active; ~30-60 min on a loaded 2-core CPU):

    python -m evaluation.benchmarks.baseline_table --n 20 --random-n 100 --max-steps 15 --out .r2w/baseline.json
    python -m evaluation.benchmarks.baseline_table --games simonsays,peckingorder,arithmetic --families '' \\
        --n 100 --random-n 100 --sampled      # issue 10's game pick (vLLM)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from evaluation.environments.twx import GAME_PARAMS, GAMES
from evaluation.metrics import score_episodes
from r2w.config import EnvConfig
from r2w.rollout import RandomPolicy, agent_policy

# Small instances a 135M model can attempt; the table states them.
RG_FAMILIES: dict[str, dict] = {
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 2,
        "operators": ["+", "-"],
        "allow_parentheses": False,
        "allow_negation": False,
    },
    "leg_counting": {"min_animals": 1, "max_animals": 2, "max_instances": 3},
    "spell_backward": {"min_word_len": 3, "max_word_len": 5},
}


def suites(games: list[str], families: list[str], max_steps: int) -> list[tuple[str, EnvConfig, str]]:
    out = [(f"twx/{g}", EnvConfig(game=g, max_steps=max_steps), GAME_PARAMS[g] or "TWX defaults") for g in games]
    for fam in families:
        kwargs = RG_FAMILIES.get(fam, {})
        env = EnvConfig(name="reasoning_gym", families=[fam], family_kwargs={fam: kwargs} if kwargs else {})
        out.append((f"reasoning_gym/{fam}", env, json.dumps(kwargs, separators=(",", ":")) or "defaults"))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = common.parser(
        __doc__,
        model="smollm2",
        n=20,
        n_help="test seeds per suite for the agent",
        backend=True,
        data_dir=".r2w",
        out="JSON file for the rows (rewritten after each suite)",
    )
    parser.add_argument("--random-n", type=int, default=100, help="test seeds per suite for the random policy")
    parser.add_argument("--max-steps", type=int, default=15)
    parser.add_argument("--games", default=",".join(GAMES))
    parser.add_argument("--families", default=",".join(RG_FAMILIES))
    parser.add_argument("--sampled", action="store_true", help="also one sample at temperature 1 (base sampled)")
    args = parser.parse_args(argv)
    cfg = common.load("demo", overrides={"data_dir": args.data_dir}, threads=1)

    dtype = "float32" if args.model == "tiny" else cfg.models.dtype
    backend = common.backend(cfg, args.model, args.backend, dtype=dtype)
    policy = agent_policy(cfg, backend, "base", temperature=0.0)
    sampled = agent_policy(cfg, backend, "base-sampled", temperature=1.0)
    games = [g for g in args.games.split(",") if g]
    families = [f for f in args.families.split(",") if f]
    rows: list[dict] = []
    header = (
        "| suite | params | n | base greedy (95% CI) | base sampled T=1 | random n | random (95% CI) | base s/episode |"
    )
    print(f"\nbaseline: {args.model}, constrained, max {args.max_steps} steps, test seeds\n")
    print(header + "\n|---|---|---:|---|---|---:|---|---:|", flush=True)
    suite_cfg = common.variant(cfg, "env", max_steps=args.max_steps)  # the step budget; factories: each suite's env
    for name, env_cfg, params in suites(games, families, args.max_steps):
        factory = make_environment(env_cfg)
        tasks = factory.tasks("test", args.n)
        batch = min(args.n, common.BATCH_CAP)
        base, seconds = common.timed(common.play, suite_cfg, factory, tasks, policy, f"{name} base", batch_size=batch)
        per_episode = seconds / args.n
        samp = None
        if args.sampled:
            samp = common.play(suite_cfg, factory, tasks, sampled, f"{name} base sampled", batch_size=batch)
        random_tasks = factory.tasks("test", args.random_n)
        random_policy = RandomPolicy(cfg.runtime.seed)
        rand = common.play(suite_cfg, factory, random_tasks, random_policy, f"{name} random", batch_size=16)
        b, r = score_episodes("base", base), score_episodes("random", rand)
        s = score_episodes("base-sampled", samp) if samp is not None else None
        row = {
            "suite": name,
            "params": params,
            "base": b.model_dump(),
            "random": r.model_dump(),
            "base_sampled": s.model_dump() if s else None,
            "s_per_episode": per_episode,
        }
        rows.append(row)
        print(
            f"| {name} | `{params}` | {b.n} | {common.success(b, 0)} | {common.success(s, 0) if s else '-'} "
            f"| {r.n} | {common.success(r, 0)} "
            f"| {per_episode:.1f} |",
            flush=True,
        )
        meta = {"model": args.model, "max_steps": args.max_steps, "date": datetime.now(UTC).isoformat()}
        common.write_out(args.out, {"meta": meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
