"""vLLM prefix-cache hit rate on the teach stage's workload (n samples per task, growing history).

On CPU, prefill dominates an agent step (long prompts, a few generated tokens), so the share of prompt
tokens vLLM's prefix cache serves decides much of the speed. This plays `--tasks` training tasks x
`teach.samples` samples with the retrieved hints, exactly as the teach stage does, on one vLLM engine
with its statistics on, and prints prefix-cache queries, hits and the hit rate (vLLM's own counters).

    python -m evaluation.benchmarks.prefix_cache --config demo --tasks 16
"""

from __future__ import annotations

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from r2w.backends.vllm_engine import VLLMEngineBackend
from r2w.hintstore import HintStore
from r2w.models import resolve_model
from r2w.rollout import agent_policy, play


def counters(engine) -> dict[str, float]:
    """vLLM's prefix-cache counters (v1 metric names), summed over their label sets."""
    out: dict[str, float] = {}
    for metric in engine.get_metrics():
        if "prefix_cache" in metric.name and hasattr(metric, "value"):
            out[metric.name] = out.get(metric.name, 0.0) + float(metric.value)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, config="demo", out=common.JSON_OUT)
    ap.add_argument("--tasks", type=int, default=16, help="training tasks (x teach.samples samples each)")
    args = ap.parse_args(argv)
    cfg = common.load(args.config, args.set)
    model = resolve_model(cfg.models.base, cfg.data_path)
    backend = VLLMEngineBackend(model, dtype=cfg.models.dtype, seed=cfg.runtime.seed, disable_log_stats=False)
    store = HintStore(cfg.hints, cfg.data_path)
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", args.tasks)
    policy = agent_policy(cfg, backend, "teacher", cfg.teach.temperature)
    episodes, seconds = common.timed(
        play, cfg, factory, tasks, policy, "prefix cache", samples=cfg.teach.samples, retrieve=store.retrieve
    )
    found = counters(backend.llm)
    backend.close()
    queries = next((v for k, v in found.items() if k.endswith("prefix_cache_queries")), 0.0)
    hits = next((v for k, v in found.items() if k.endswith("prefix_cache_hits")), 0.0)
    result = {"episodes": len(episodes), "seconds": seconds, "queries": queries, "hits": hits,
              "hit_rate": hits / queries if queries else None, "counters": found}  # fmt: skip
    rate = f"{hits / queries:.1%}" if queries else "n/a (no counters)"
    text = (
        f"prefix cache on {len(episodes)} teach episodes ({args.tasks} tasks x {cfg.teach.samples} samples, "
        f"{cfg.env.max_steps} steps): {hits:.0f} of {queries:.0f} prompt tokens served from the cache = {rate} "
        f"({seconds:.0f} s)"
    )
    return common.report(result, text, args.out)


if __name__ == "__main__":
    main()
