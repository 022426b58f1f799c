"""Rollout throughput on 1 and on 2 Dask workers, the same tasks in one run: episodes/s, tokens/s, the ratio.

The greedy agent (valid-action constrained, the config's backend and dtype, `runtime.torch_threads` per
worker) plays the same N test tasks through r2w.scaleout.play_agent, the path `r2w run --dask-address` takes:
first on a local Dask cluster of one single-threaded worker process (`local:1`), then on one of two (`local:2`).
Batches are `agent.batch_size` consecutive episodes (N=16, batch 8: two batches, one per worker with two).
Before each timing every worker has loaded the model and the Prefect API is up, so the figures are rollouts
plus Prefect/Dask overhead, not start-up. Both runs' episodes must be identical (same content hash, printed).
The CPU model, the flags speed depends on, the core count and the load average are printed beside the figures:
two workers cannot beat one by much on a 2-core machine shared with other jobs.

    python -m evaluation.benchmarks.dask_throughput --config demo --n 16 --set agent.batch_size=8 \
        --out evaluation/results/dask_throughput.json          (~10-20 min with SmolLM2 on a loaded 2-core CPU)
"""

from __future__ import annotations

import time

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from r2w.contracts import content_hash, record_content
from r2w.scaleout import close_runner, play_agent, prepare


def measure(cfg, factory, tasks, backend, workers: int) -> dict:
    """The agent on every task on a fresh local cluster of `workers` processes, warmed before the clock starts."""
    address = f"local:{workers}"
    ready = prepare(address, backend.recipe, cfg.runtime.torch_threads)
    run_cfg = common.variant(cfg, "runtime", dask_address=address)
    start = time.perf_counter()
    played = play_agent(run_cfg, factory, make_environment, tasks, backend, "base", 0.0, f"{workers} worker(s)")
    wall = time.perf_counter() - start
    close_runner(address)
    episodes = played.episodes
    return {
        "workers": workers,
        "ready": ready,
        "played_by": played.workers,
        "episodes": len(episodes),
        "steps": sum(len(e.steps) for e in episodes),
        "wall_s": round(wall, 2),
        "episodes_per_s": len(episodes) / wall,
        "tokens_per_s": sum(e.total_tokens for e in episodes) / wall,
        "gen_tokens_per_s": sum(e.completion_tokens for e in episodes) / wall,
        "successes": sum(e.success for e in episodes),
        "content_hash": content_hash([record_content(e) for e in episodes]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__, config="demo", n=16, n_help="test tasks (episodes)", model="smollm2",
                           out=common.JSON_OUT)  # fmt: skip
    args = parser.parse_args(argv)
    cfg = common.load(args.config, args.set)
    backend = common.backend(cfg, args.model, seed=cfg.runtime.seed)  # the driver's copy: only its recipe travels
    factory = make_environment(cfg.env)
    tasks = factory.tasks("test", args.n)
    runs = [measure(cfg, factory, tasks, backend, workers) for workers in (1, 2)]
    one, two = runs
    result = {
        "config": args.config,
        "model": args.model,
        "backend": backend.identity,
        "batch_size": cfg.agent.batch_size,
        "torch_threads_per_worker": cfg.runtime.torch_threads,
        "machine": common.machine(),
        "runs": runs,
        "ratio_episodes_per_s": two["episodes_per_s"] / one["episodes_per_s"],
        "ratio_tokens_per_s": two["tokens_per_s"] / one["tokens_per_s"],
        "same_episodes": one["content_hash"] == two["content_hash"],
    }
    m = result["machine"]
    lines = [
        f"{args.n} {cfg.env.name}/{cfg.env.game} episodes, {args.model} ({backend.identity}), "
        f"batch {cfg.agent.batch_size}, {cfg.runtime.torch_threads} torch thread(s) per worker",
        f"machine: {m['cpu']}, flags {','.join(m['flags']) or '-'}, {m['cores']} cores, load avg {m['load_avg_1m']}",
        "",
        "| Dask workers | wall s | episodes/s | tokens/s (prompt+gen) | generated tokens/s | successes | played by |",
        "|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r['workers']} | {r['wall_s']:.1f} | {r['episodes_per_s']:.3f} | {r['tokens_per_s']:.0f} "
            f"| {r['gen_tokens_per_s']:.1f} | {r['successes']}/{r['episodes']} | {len(r['played_by'])} process(es) |"
            for r in runs
        ),
        "",
        f"2 vs 1 worker: episodes/s x{result['ratio_episodes_per_s']:.2f}, "
        f"tokens/s x{result['ratio_tokens_per_s']:.2f}; identical episodes: {result['same_episodes']}",
    ]
    return common.report(result, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
