"""r2w's rollout throughput against bare `vllm.LLM.generate` on the same requests, in one run (issue 25.2).

Arm 1 plays real episodes through r2w's rollout (`r2w.rollout.play`: environment steps, prompt building,
hint retrieval, rendering, tokenization, constrained choice, parsing) on the configured vLLM engine, and
records every request r2w hands the engine (token ids, vLLM sampling params, LoRA request). Arm 2 empties
the prefix cache and sends exactly those requests, call by call in the same batches, straight to the same
engine's `LLM.generate`. Both arms count the tokens vLLM generated; the ratio of their tokens/s is r2w's
rollout speed as a share of the bare engine's (goal >= 0.9x). Two workloads, each measured this way:

- `teach`: the teach stage's own (retrieved hints, `teach.samples` samples at `teach.temperature`);
- `greedy`: the evaluation's (no hints, greedy, one sample).

    python -m evaluation.benchmarks.rollout_vs_bare --config demo --tasks 16
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from r2w.backends.vllm_engine import VLLMEngineBackend
from r2w.hintstore import HintStore
from r2w.models import resolve_model
from r2w.rollout import agent_policy, play


@dataclass
class Recorder:
    """Wraps `LLM.generate`: keeps each call's arguments, its seconds and the tokens it generated."""

    generate: object
    calls: list[tuple[tuple, dict]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        start = time.perf_counter()
        outputs = self.generate(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.tokens += generated_tokens(outputs)
        return outputs


def generated_tokens(outputs) -> int:
    return sum(len(o.token_ids) for out in outputs for o in out.outputs)


def measure(cfg, backend: VLLMEngineBackend, workload: str, n_tasks: int) -> dict:
    """One workload: r2w's rollout (recorded), then the same requests bare; tokens/s of each and the ratio."""
    llm = backend.llm
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", n_tasks)
    teach = workload == "teach"
    policy = agent_policy(cfg, backend, "teacher" if teach else "base", cfg.teach.temperature if teach else 0.0)
    retrieve = HintStore(cfg.hints, cfg.data_path).retrieve if teach and cfg.hints.k > 0 else None
    recorder = Recorder(llm.generate)
    llm.reset_prefix_cache()
    llm.generate = recorder
    try:
        episodes, rollout_s = common.timed(
            play, cfg, factory, tasks, policy, f"r2w {workload}", samples=cfg.teach.samples if teach else 1,
            retrieve=retrieve,
        )  # fmt: skip
    finally:
        llm.generate = recorder.generate
    llm.reset_prefix_cache()
    bare_tokens, start = 0, time.perf_counter()
    for args, kwargs in recorder.calls:
        bare_tokens += generated_tokens(llm.generate(*args, **kwargs))
    bare_s = time.perf_counter() - start
    r2w_rate, bare_rate = recorder.tokens / rollout_s, bare_tokens / bare_s
    return {
        "workload": workload,
        "episodes": len(episodes),
        "generate_calls": len(recorder.calls),
        "r2w": {
            "seconds": rollout_s,
            "tokens": recorder.tokens,
            "tokens_per_s": r2w_rate,
            "seconds_inside_generate": recorder.seconds,
        },  # fmt: skip
        "bare": {"seconds": bare_s, "tokens": bare_tokens, "tokens_per_s": bare_rate},
        "ratio": r2w_rate / bare_rate,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, config="demo", out=common.JSON_OUT)
    ap.add_argument("--tasks", type=int, default=16, help="training tasks per workload")
    ap.add_argument("--workloads", default="teach,greedy", help="comma-separated: teach, greedy")
    args = ap.parse_args(argv)
    cfg = common.load(args.config, args.set)
    model = resolve_model(cfg.models.base, cfg.data_path)
    backend = VLLMEngineBackend(model, dtype=cfg.models.dtype, seed=cfg.runtime.seed)
    try:
        rows = [measure(cfg, backend, w.strip(), args.tasks) for w in args.workloads.split(",") if w.strip()]
    finally:
        backend.close()
    result = {"machine": common.machine(), "dtype": cfg.models.dtype, "rows": rows}
    lines = [
        f"{r['workload']}: {r['episodes']} episodes, {r['generate_calls']} generate calls; r2w rollout "
        f"{r['r2w']['tokens_per_s']:.1f} tok/s ({r['r2w']['tokens']} tokens in {r['r2w']['seconds']:.1f} s, "
        f"{r['r2w']['seconds_inside_generate']:.1f} s inside generate), bare LLM.generate "
        f"{r['bare']['tokens_per_s']:.1f} tok/s ({r['bare']['tokens']} in {r['bare']['seconds']:.1f} s): "
        f"{r['ratio']:.2f}x"
        for r in rows
    ]
    return common.report(result, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
