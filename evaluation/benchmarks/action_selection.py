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

import argparse
import time

from r2w.datasets import write_json_atomically
from r2w.runtime import configure_environment, set_torch_threads


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tidy6")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--model", action="append", required=True, metavar="NAME=SPEC", help="policy name (base/student) = model"
    )
    parser.add_argument("--n", type=int, default=200, help="held-out test seeds")
    parser.add_argument("--modes", default="generate,score", help="comma list of generate, score")
    parser.add_argument("--pair-with", default=None, help="eval-episodes dataset whose episodes are the generate arm")
    parser.add_argument("--out", default=None, help="JSON file (written atomically)")
    args = parser.parse_args(argv)

    from r2w.config import load_config, parse_sets

    overrides = {**parse_sets(args.set), "models.backend": "transformers", "models.dtype": "float32"}
    cfg = load_config(args.config, overrides)
    configure_environment(cfg.data_dir)
    set_torch_threads(cfg.runtime.torch_threads)

    from evaluation.environments import make_environment
    from evaluation.metrics import compare_paired, score_episodes
    from r2w.backends.hf import TransformersBackend
    from r2w.contracts import Episode
    from r2w.datasets import load_records
    from r2w.models import resolve_model
    from r2w.rollout import agent_policy, run_episodes

    factory = make_environment(cfg.env)
    jobs = [(t, 0) for t in factory.tasks("test", args.n)]
    seeds = {t.task_id for t, _ in jobs}
    stored = load_records(args.pair_with, Episode) if args.pair_with else []
    modes = [m for m in args.modes.split(",") if m]
    result: dict = {"meta": {"config": args.config, "n": args.n, "pair_with": args.pair_with}, "scores": {}}
    result["comparisons"], result["seconds"] = [], {}
    for item in args.model:
        name, _, spec = item.partition("=")
        backend = TransformersBackend(resolve_model(spec, cfg.data_path), dtype="float32", seed=cfg.runtime.seed)
        arms = {}
        for mode in modes:
            if mode == "generate" and stored:
                arms[mode] = [e for e in stored if e.policy == name and e.task_id in seeds]
                if len(arms[mode]) != len(jobs):
                    raise SystemExit(f"--pair-with: {len(arms[mode])} {name!r} episodes on these {len(jobs)} seeds")
                continue
            policy_cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"action_selection": mode})})
            started = time.perf_counter()
            arms[mode] = run_episodes(
                factory,
                jobs,
                agent_policy(policy_cfg, backend, name, temperature=0.0),
                cfg.env.max_steps,
                min(cfg.agent.batch_size, 64),
                desc=f"{name} {mode}",
                avoid_losing_actions=cfg.agent.avoid_losing_actions,
            )
            result["seconds"][f"{name} {mode}"] = time.perf_counter() - started
        for mode, episodes in arms.items():
            result["scores"][f"{name} {mode}"] = score_episodes(f"{name} {mode}", episodes).model_dump()
        if {"generate", "score"} <= set(arms):
            paired = compare_paired(f"{name} score", arms["score"], f"{name} generate", arms["generate"])
            result["comparisons"].append(paired)
        backend.close()
    print(render(result))
    if args.out:
        write_json_atomically(args.out, result)
    return result


def render(result: dict) -> str:
    from evaluation.benchmarks.heldout_comparison import paired_table, scores_table

    lines = [f"n = {result['meta']['n']} test seeds, greedy, hint-free", ""]
    lines += scores_table(list(result["scores"].values()))
    if result["comparisons"]:
        lines += ["", *paired_table(result["comparisons"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
