"""Lockstep batched rollouts vs one episode at a time, on the same games.

Both runs play the same N test seeds with the same greedy SmolLM2 agent (valid-action constrained
on TextWorldExpress, free-text answers on reasoning-gym) and the transformers backend; the only
difference is how many live episodes share one `generate` call per step (`--batch` vs 1).
Prints episodes/s, generated tokens/s, prompt+generated tokens/s, the seconds spent inside
`generate` (the rest is environment start-up and stepping), success, and the batched/sequential
ratio. Greedy decoding makes both runs pick (nearly) the same actions, so they do comparable work;
the number of episodes whose action sequences match is printed.

Commands (repo root, venv active; ~5-8 min each on a loaded 2-core CPU):

    python -m evaluation.benchmarks.rollout_batching --model smollm2 --game twc --episodes 16 --max-steps 10 --batch 16
    python -m evaluation.benchmarks.rollout_batching --model smollm2 --env reasoning_gym --episodes 16 --batch 16
"""

from __future__ import annotations

import time

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from r2w.backends import SamplingParams
from r2w.config import AgentConfig, EnvConfig, R2WConfig
from r2w.contracts import Message
from r2w.rollout import agent_policy


class TimedBackend:
    """Delegates to a real backend and adds up the seconds spent in `generate`."""

    def __init__(self, backend) -> None:
        self.backend, self.seconds = backend, 0.0

    def generate(self, prompts, params, choices=None):
        start = time.perf_counter()
        try:
            return self.backend.generate(prompts, params, choices=choices)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str):
        return getattr(self.backend, name)


def play(cfg: R2WConfig, factory, tasks, backend, batch: int) -> dict:
    """The greedy agent on every task, `batch` episodes per generate call, timed inside and outside generate."""
    timed = TimedBackend(backend)
    start = time.perf_counter()
    policy = agent_policy(cfg, timed, "base", 0.0)
    episodes = common.play(cfg, factory, tasks, policy, f"batch {batch}", batch_size=batch)
    wall = time.perf_counter() - start
    generated = sum(e.completion_tokens for e in episodes)
    total = sum(e.total_tokens for e in episodes)
    return {
        "batch": batch,
        "episodes": len(episodes),
        "steps": sum(len(e.steps) for e in episodes),
        "wall_s": wall,
        "generate_s": timed.seconds,
        "episodes_per_s": len(episodes) / wall,
        "gen_tokens_per_s": generated / wall,
        "all_tokens_per_s": total / wall,
        "successes": sum(e.success for e in episodes),
        "actions": {e.task_id: [s.action for s in e.steps] for e in episodes},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__, model="smollm2", data_dir=".r2w")
    parser.add_argument("--env", default="twx", choices=["twx", "reasoning_gym"])
    parser.add_argument("--game", default="twc")
    parser.add_argument("--families", default="basic_arithmetic,leg_counting,spell_backward")
    parser.add_argument("--answer-tokens", type=int, default=48, help="free-text answer budget (reasoning_gym)")
    parser.add_argument("--params", default=None, help="TWX params (default: r2w's small per-game defaults)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args(argv)
    common.setup(args.data_dir, threads=1)

    if args.env == "twx":
        env_cfg = EnvConfig(game=args.game, params=args.params, max_steps=args.max_steps)
        suite = f"twx/{args.game}"
    else:
        env_cfg = EnvConfig(name="reasoning_gym", families=args.families.split(","), max_steps=args.max_steps)
        suite = f"reasoning_gym/{args.families}"
    # the agent: greedy, 3 history turns, constrained to the valid actions (free-text answers on reasoning-gym)
    agent = AgentConfig(max_new_tokens=args.max_new_tokens, answer_max_new_tokens=args.answer_tokens, history=3)
    cfg = R2WConfig(data_dir=args.data_dir, env=env_cfg, agent=agent)
    dtype = "float32" if args.model == "tiny" else "bfloat16"
    backend = common.backend(cfg, args.model, "transformers", dtype=dtype)
    factory = make_environment(env_cfg)
    tasks = factory.tasks("test", args.episodes)
    # Warm-up outside the timings: first-call allocations, and one JVM start to price env start-up
    # (included in both runs' wall time: `batch` environments vs 1).
    backend.generate([[Message(role="user", content="hello")]], SamplingParams(max_tokens=4))
    t0 = time.perf_counter()
    factory.make().close()
    env_start = time.perf_counter() - t0
    runs = [play(cfg, factory, tasks, backend, b) for b in (args.batch, 1)]
    batched, single = runs
    same = sum(batched["actions"][k] == single["actions"][k] for k in batched["actions"])
    print(f"\nrollout batching: {args.model}, {suite}, {args.episodes} test seeds, {args.max_steps} steps max")
    print(
        "| batch | episodes | steps | wall s | in generate s | episodes/s | generated tok/s "
        "| prompt+generated tok/s | success |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['batch']} | {r['episodes']} | {r['steps']} | {r['wall_s']:.1f} | {r['generate_s']:.1f} "
            f"| {r['episodes_per_s']:.3f} | {r['gen_tokens_per_s']:.1f} | {r['all_tokens_per_s']:.0f} "
            f"| {r['successes']}/{r['episodes']} |"
        )
    ratio = batched["episodes_per_s"] / single["episodes_per_s"]
    tok_ratio = batched["gen_tokens_per_s"] / single["gen_tokens_per_s"]
    gen_ratio = single["generate_s"] / batched["generate_s"]
    print(
        f"\nbatched/sequential: {ratio:.2f}x episodes/s, {tok_ratio:.2f}x generated tokens/s, "
        f"{gen_ratio:.2f}x less time in generate"
    )
    print(f"identical action sequences (greedy): {same}/{len(tasks)} episodes")
    print(f"one environment start: {env_start:.2f} s (x{args.batch} in the batched run, x1 in the other)")
    return {"ratio_episodes": ratio, "ratio_tokens": tok_ratio, "same": same, "runs": runs}


if __name__ == "__main__":
    main()
