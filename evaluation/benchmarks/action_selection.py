"""Action selection: constrained generation vs scoring every valid action by log-likelihood, same seeds.

Generation (the pipeline's default) decodes token by token inside the valid-action trie, so an early
token can commit it to a poor action; scoring (`agent.action_selection=score`) sums each valid action's
log-likelihood and takes the best. Both play greedily, hint-free, on the first `--n` test seeds of the
config's game, in the transformers backend (scoring needs logits) at float32, and are paired per seed.
With `--pair-with <eval-episodes dataset>` the generation arm is read from a pipeline run's stored
evaluation episodes (same seeds, vLLM) instead of being replayed: half the CPU time, one backend
difference (bf16 vLLM vs float32 transformers) to keep in mind.

Command (repo root, venv active; ~10 min per model and mode for 200 twc episodes on a 2-core CPU):

    python -m evaluation.benchmarks.action_selection --config tidy6 --n 200 \\
        --model base=smollm2 --model student=.r2w-tidy6/students/<id>/merged \\
        [--pair-with .r2w-tidy6/datasets/eval-episodes/<id>] --out .r2w/exp/action_selection.json
"""

from __future__ import annotations

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from evaluation.metrics import compare_paired, score_episodes
from r2w.contracts import Episode
from r2w.datasets import load_records
from r2w.rollout import agent_policy


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__, config="tidy6", n=200, out=common.JSON_OUT)
    parser.add_argument(
        "--model", action="append", required=True, metavar="NAME=SPEC", help="policy name (base/student) = model"
    )
    parser.add_argument("--modes", default="generate,score", help="comma list of generate, score")
    parser.add_argument("--pair-with", default=None, help="eval-episodes dataset whose episodes are the generate arm")
    args = parser.parse_args(argv)
    # scoring needs logits: the transformers backend, at float32
    cfg = common.load(args.config, args.set, {"models.backend": "transformers", "models.dtype": "float32"})

    factory = make_environment(cfg.env)
    tasks = factory.tasks("test", args.n)
    seeds = {t.task_id for t in tasks}
    stored = load_records(args.pair_with, Episode) if args.pair_with else []
    modes = [m for m in args.modes.split(",") if m]
    result: dict = {"meta": {"config": args.config, "n": args.n, "pair_with": args.pair_with}, "scores": {}}
    result["comparisons"], result["seconds"] = [], {}
    for item in args.model:
        name, _, spec = item.partition("=")
        backend = common.backend(cfg, spec, seed=cfg.runtime.seed)
        arms = {}
        for mode in modes:
            if mode == "generate" and stored:
                arms[mode] = [e for e in stored if e.policy == name and e.task_id in seeds]
                if len(arms[mode]) != len(tasks):
                    raise SystemExit(f"--pair-with: {len(arms[mode])} {name!r} episodes on these {len(tasks)} seeds")
                continue
            mode_cfg = common.variant(cfg, "agent", action_selection=mode)
            policy = agent_policy(mode_cfg, backend, name, temperature=0.0)
            arms[mode], result["seconds"][f"{name} {mode}"] = common.timed(
                common.play, mode_cfg, factory, tasks, policy, f"{name} {mode}"
            )
        for mode, episodes in arms.items():
            result["scores"][f"{name} {mode}"] = score_episodes(f"{name} {mode}", episodes).model_dump()
        if {"generate", "score"} <= set(arms):
            paired = compare_paired(f"{name} score", arms["score"], f"{name} generate", arms["generate"])
            result["comparisons"].append(paired)
        backend.close()
    return common.report(result, render(result), args.out)


def render(result: dict) -> str:
    header = f"n = {result['meta']['n']} test seeds, greedy, hint-free"
    return "\n".join(common.tables(header, result["scores"], result["comparisons"]))


if __name__ == "__main__":
    main()
