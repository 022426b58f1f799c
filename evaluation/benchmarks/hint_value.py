"""Do hints raise the teacher's success? The base model with vs without a hints block, same seeds, paired.

Measured, not assumed (issue 10): the hints block is rendered exactly as the teacher sees it
(r2w.agent_prompt.render_hints_block) from a hint pack (JSONL of r2w hints, e.g. a curated pack) and
given to every episode; greedy and sampled decoding; TRAIN seeds by default (where the teacher plays).

    python -m evaluation.benchmarks.hint_value --game peckingorder \
        --pack configs/hints/peckingorder_curated.jsonl --n 200
"""

from __future__ import annotations

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from evaluation.metrics import mcnemar_p, paired_counts, score_episodes
from r2w.agent_prompt import render_hints_block
from r2w.config import EnvConfig, HintsConfig
from r2w.hintstore import read_pack
from r2w.rollout import agent_policy


def main(argv: list[str] | None = None) -> list[dict]:
    parser = common.parser(__doc__, n=200, n_help="seeds of --split", backend=True, data_dir=".r2w")
    parser.add_argument("--game", required=True, help="TWX game type")
    parser.add_argument("--params", default=None, help="TWX game params (default: r2w's per-game defaults)")
    parser.add_argument("--pack", required=True, help="JSONL hint pack")
    parser.add_argument("--split", default="train")
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--max-steps", type=int, default=15)
    args = parser.parse_args(argv)
    cfg = common.load("demo", overrides={"data_dir": args.data_dir}, threads=1)

    try:
        hints = read_pack(args.pack, HintsConfig())  # the same parse + screen as `r2w hints import`
    except (OSError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    block = render_hints_block(hints)
    backend = common.backend(cfg, "smollm2", args.backend)
    env = EnvConfig(game=args.game, params=args.params, max_steps=args.max_steps)
    # every episode gets the whole pack: a "retrieval" that returns all of it (hints.k only has to be > 0)
    run_cfg = common.variant(cfg.model_copy(update={"env": env}), "hints", k=max(len(hints), 1))
    factory = make_environment(env)
    tasks = factory.tasks(args.split, args.n)
    print(f"hints block ({len(hints)} hints):{block}\n")
    print("| temperature | no hints | with hints | hints only / no-hints only | McNemar p |\n|---|---|---|---|---:|")
    rows = []
    for temp in (float(t) for t in args.temperatures.split(",")):
        played = {}
        for with_hints in (False, True):
            played[with_hints] = common.play(
                run_cfg,
                factory,
                tasks,
                agent_policy(run_cfg, backend, "teacher" if with_hints else "base", temp),
                f"T={temp} {'hints' if with_hints else 'no hints'}",
                retrieve=(lambda category, query, k: hints) if with_hints else None,
                batch_size=min(args.n, common.BATCH_CAP),
            )
        a, b = score_episodes("hints", played[True]), score_episodes("none", played[False])
        table = paired_counts(played[True], played[False])
        row = {"temperature": temp, "hints": a.model_dump(), "none": b.model_dump(), "paired": table}
        rows.append(row)
        print(
            f"| {temp} | {common.success(b)} | {common.success(a)} "
            f"| {table['only_a']} / {table['only_b']} | {mcnemar_p(table['only_a'], table['only_b']):.2g} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
