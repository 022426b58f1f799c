"""Teacher generation throughput: r2w's transformers backend vs r2w's vLLM engine vs bare `vllm.LLM`.

One batch of real teacher prompts (TWX twc observations after 0-3 random steps, recent history and
the curated hints block in the system prompt, built by `r2w.agent_prompt.build_messages`) goes through

1. r2w `TransformersBackend` (the in-process fallback),
2. r2w `VLLMEngineBackend` (rendering, tokenization, per-prompt params, Completion conversion),
3. bare `vllm.LLM.generate` on the same token ids and sampling params (same engine instance),

and the script prints generated tokens/s for each, the vLLM/transformers ratio and r2w's overhead
over bare vLLM (wall time of 2 / wall time of 3 - 1). Two workloads:

- `free`: greedy, up to --max-tokens new tokens per prompt (the throughput figure);
- `choice`: the real teacher step: n=4 samples at temperature 1.0 constrained to the valid actions;
- `greedy`: the evaluation's step: one greedy reply constrained to the valid actions.

`--dtype auto` (the default) takes what the CPU runs fast (r2w/precision.py: float32 on AVX2-only machines).

Command (repo root, venv active; ~2-4 min on a 2-core CPU, SmolLM2 provisioned by `r2w models pull`):

    python -m evaluation.benchmarks.generation_throughput --model smollm2 --prompts 64 --max-tokens 64
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from r2w.agent_prompt import build_messages, render_hints_block
from r2w.backends import SamplingParams, TransformersBackend, VLLMEngineBackend
from r2w.config import EnvConfig
from r2w.contracts import Hint
from r2w.models import resolve_model
from r2w.precision import resolve_dtype

REPO = Path(__file__).resolve().parents[2]


def teacher_prompts(n: int, seed: int = 0):
    """(messages, valid_actions) for n real twc decisions with the curated hints block."""
    hints = [
        Hint.model_validate_json(line)
        for line in (REPO / "configs/hints/twc_curated.jsonl").read_text().split("\n")
        if line.strip()
    ]
    block = render_hints_block(hints[:3])
    factory = make_environment(EnvConfig(name="twx", game="twc"))
    rng = random.Random(seed)
    env = factory.make()
    out = []
    try:
        for i, task in enumerate(factory.tasks("train", n)):
            text, obs = env.reset(task)
            history: list[tuple[str, str]] = []
            for _ in range(i % 4):
                action = rng.choice(obs.valid_actions)
                new = env.step(action)
                if new.done:
                    break
                history.append((action, new.text))
                obs = new
            out.append((build_messages(text, obs.text, obs.valid_actions, history[-3:], block), obs.valid_actions))
    finally:
        env.close()
    return out


def count_tokens(completions) -> tuple[int, int]:
    return sum(sum(c.completion_tokens) for c in completions), sum(c.prompt_tokens for c in completions)


def run_vllm(model: Path, prompts: list, workloads: dict, repeats: int, dtype: str) -> tuple[dict[str, dict], float]:
    """Time r2w's VLLMEngineBackend and bare `LLM.generate` (same engine, same token ids and params)."""
    backend, startup = common.timed(VLLMEngineBackend, model, dtype=dtype, seed=0)
    results: dict[str, dict] = {}
    try:
        for name, (params, ch) in workloads.items():
            backend.generate(prompts[:4], params, ch[:4] if ch else None)  # warm-up
            token_prompts = [
                {"prompt_token_ids": backend.tokenizer(backend.render(p), add_special_tokens=False)["input_ids"]}
                for p in prompts
            ]
            bare_params = [backend.sampling_params(params, ch[i] if ch else None, None) for i in range(len(prompts))]
            r2w_runs, bare_runs = [], []
            for _ in range(repeats):  # alternate, so machine load hits both alike
                t = time.perf_counter()
                comps = backend.generate(prompts, params, ch)
                r2w_runs.append((time.perf_counter() - t, count_tokens(comps)[0]))
                t = time.perf_counter()
                outs = backend.llm.generate(token_prompts, bare_params, use_tqdm=False)
                bare_runs.append((time.perf_counter() - t, sum(len(o.token_ids) for r in outs for o in r.outputs)))
            (r2w_wall, r2w_tokens), (bare_wall, bare_tokens) = min(r2w_runs), min(bare_runs)
            results[name] = {
                "vllm_r2w": {"wall_s": r2w_wall, "tokens": r2w_tokens, "tok_s": r2w_tokens / r2w_wall},
                "vllm_bare": {"wall_s": bare_wall, "tokens": bare_tokens, "tok_s": bare_tokens / bare_wall},
                "r2w_overhead": r2w_wall / bare_wall - 1,
                "all_walls_r2w": [round(r[0], 3) for r in r2w_runs],
                "all_walls_bare": [round(r[0], 3) for r in bare_runs],
            }
    finally:
        backend.close()
    return results, startup


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__, model="smollm2", data_dir=str(REPO / ".r2w"))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each vLLM run (best is reported)")
    ap.add_argument("--workloads", default="free,choice")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    ap.add_argument("--json", help="also write the figures to this file (atomically)")
    args = ap.parse_args(argv)
    common.setup(args.data_dir, threads=1)
    dtype, why = resolve_dtype(args.dtype)

    model = resolve_model(args.model, args.data_dir)
    batch = teacher_prompts(args.prompts)
    prompts = [m for m, _ in batch]
    choices = [v for _, v in batch]
    workloads = {
        "free": (SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens), None),
        "choice": (SamplingParams(n=4, temperature=1.0, top_p=1.0, max_tokens=12), choices),
        "greedy": (SamplingParams(n=1, temperature=0.0, max_tokens=12), choices),
    }
    selected = [w.strip() for w in args.workloads.split(",") if w.strip()]
    print(f"model={model.name} prompts={len(prompts)} cpus={os.cpu_count()} load(1m)={os.getloadavg()[0]:.2f}")
    print(f"dtype={dtype} ({why}); machine: {common.machine()}")

    results, startup = run_vllm(model, prompts, {w: workloads[w] for w in selected}, args.repeats, dtype)
    print(f"vLLM engine start-up: {startup:.1f} s")

    if not args.skip_transformers:
        hf = TransformersBackend(model, dtype=dtype, seed=0)
        for name in selected:
            params, ch = workloads[name]
            hf.generate(prompts[:4], params, ch[:4] if ch else None)  # warm-up
            comps, wall = common.timed(hf.generate, prompts, params, ch)
            tokens, _ = count_tokens(comps)
            results[name]["transformers"] = {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall}
            results[name]["vllm_over_transformers"] = results[name]["vllm_r2w"]["tok_s"] / (tokens / wall)

    print(f"load(1m) at end={os.getloadavg()[0]:.2f}")
    for name, r in results.items():
        print(f"\n[{name}] {len(prompts)} prompts, params={workloads[name][0]}")
        for key in ("transformers", "vllm_r2w", "vllm_bare"):
            if key in r:
                x = r[key]
                print(f"  {key:13s} {x['tokens']:6d} tokens in {x['wall_s']:7.2f} s = {x['tok_s']:7.1f} tok/s")
        if "vllm_over_transformers" in r:
            print(f"  vLLM (r2w) / transformers: {r['vllm_over_transformers']:.2f}x")
        print(
            f"  r2w overhead over bare vllm.LLM: {100 * r['r2w_overhead']:+.1f}% "
            f"(walls r2w {r['all_walls_r2w']}, bare {r['all_walls_bare']})"
        )
    common.write_out(args.json, {"startup_s": startup, **results})
    return results


if __name__ == "__main__":
    main()
