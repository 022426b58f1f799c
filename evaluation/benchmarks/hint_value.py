"""Do hints raise the teacher's success? The base model with vs without a hints block, same seeds, paired.

Measured, not assumed (issue 10): the hints block is rendered exactly as the teacher sees it
(r2w.agent_prompt.render_hints_block) from a hint pack (JSONL of r2w hints, e.g. a curated pack) and
given to every episode; greedy and sampled decoding; TRAIN seeds by default (where the teacher plays).

    python -m evaluation.benchmarks.hint_value --game peckingorder \
        --pack configs/hints/peckingorder_curated.jsonl --n 200
"""

from __future__ import annotations

import argparse

from r2w.runtime import configure_environment, set_torch_threads


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", required=True, help="TWX game type")
    parser.add_argument("--params", default=None, help="TWX game params (default: r2w's per-game defaults)")
    parser.add_argument("--pack", required=True, help="JSONL hint pack")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--split", default="train")
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--max-steps", type=int, default=15)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data-dir", default=".r2w")
    args = parser.parse_args(argv)

    configure_environment(args.data_dir)
    set_torch_threads(1)
    from evaluation.environments import make_environment
    from evaluation.metrics import mcnemar_p, paired_counts, score_episodes
    from r2w.agent_prompt import render_hints_block
    from r2w.backends import make_backend
    from r2w.config import EnvConfig, HintsConfig, load_config
    from r2w.hintstore import read_pack
    from r2w.models import resolve_model
    from r2w.rollout import agent_policy, run_episodes

    cfg = load_config("demo", {"data_dir": args.data_dir})
    try:
        hints = read_pack(args.pack, HintsConfig())  # the same parse + screen as `r2w hints import`
    except (OSError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    block = render_hints_block(hints)
    ids = [h.hint_id for h in hints]
    backend = make_backend(args.backend, resolve_model("smollm2", args.data_dir), dtype=cfg.models.dtype)
    factory = make_environment(EnvConfig(game=args.game, params=args.params, max_steps=args.max_steps))
    jobs = [(t, 0) for t in factory.tasks(args.split, args.n)]
    print(f"hints block ({len(hints)} hints):{block}\n")
    print("| temperature | no hints | with hints | hints only / no-hints only | McNemar p |\n|---|---|---|---|---:|")
    rows = []
    for temp in (float(t) for t in args.temperatures.split(",")):
        played = {}
        for with_hints in (False, True):
            played[with_hints] = run_episodes(
                factory,
                jobs,
                agent_policy(cfg, backend, "teacher" if with_hints else "base", temp),
                args.max_steps,
                min(args.n, 64),
                desc=f"T={temp} {'hints' if with_hints else 'no hints'}",
                hints_for=(lambda task, text, obs: (ids, block)) if with_hints else None,
                avoid_losing_actions=cfg.agent.avoid_losing_actions,
            )
        a, b = score_episodes("hints", played[True]), score_episodes("none", played[False])
        table = paired_counts(played[True], played[False])
        row = {"temperature": temp, "hints": a.model_dump(), "none": b.model_dump(), "paired": table}
        rows.append(row)
        print(
            f"| {temp} | {b.successes}/{b.n} = {b.rate:.1%} ({b.ci_low:.1%}-{b.ci_high:.1%}) "
            f"| {a.successes}/{a.n} = {a.rate:.1%} ({a.ci_low:.1%}-{a.ci_high:.1%}) "
            f"| {table['only_a']} / {table['only_b']} | {mcnemar_p(table['only_a'], table['only_b']):.2g} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
