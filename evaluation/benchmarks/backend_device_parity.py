"""CPU vs GPU parity of the in-process transformers backend: same actions, same choice scores.

The backend moves itself to a GPU when torch sees one. This runs the same agent-style prompts through
constrained greedy generation and log-likelihood scoring on the CPU (CUDA hidden) and on the GPU, in
separate processes, and prints the agreement and timings. The model is `tiny` unless --model names
another (a folder or smollm2), at float32 so the two devices differ only by kernel rounding.

Command (repo root; on a machine with a GPU, else only the CPU half runs):

    python -m evaluation.benchmarks.backend_device_parity --prompts 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from evaluation.benchmarks import common
from r2w.agent_prompt import build_messages
from r2w.backends import SamplingParams, TransformersBackend
from r2w.models import resolve_model


def prompts_and_choices(n: int) -> tuple[list, list[list[str]]]:
    """Agent-style chat prompts with 3-6 valid actions each (deterministic)."""
    objects = ["apple", "sock", "plate", "book", "mug", "towel"]
    places = ["fridge", "drawer", "shelf", "basket", "table", "sink"]
    prompts, choices = [], []
    for i in range(n):
        obj, place = objects[i % len(objects)], places[(i // 2) % len(places)]
        actions = [f"take {obj}", f"put {obj} in {place}", "look around", "inventory", f"open {place}"][: 3 + i % 3]
        observation = f"You are in a kitchen. A {obj} lies on the floor. There is a closed {place}."
        prompts.append(build_messages("twc", observation, actions, history=[]))
        choices.append(actions)
    return prompts, choices


def measure(model: str, n: int, data_dir: str) -> dict:
    """One device's half: actions, scores and seconds, as JSON-able lists."""
    import torch

    backend = TransformersBackend(resolve_model(model, data_dir), dtype="float32")
    prompts, choices = prompts_and_choices(n)
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    generated, generate_s = common.timed(backend.generate, prompts, greedy, choices)
    scored, score_s = common.timed(backend.score, prompts, choices)
    actions, scores = [c.texts[0] for c in generated], [s.logprobs for s in scored]
    device = torch.cuda.get_device_name() if backend.device.type == "cuda" else "cpu"
    return {"device": device, "actions": actions, "scores": scores, "generate_s": generate_s, "score_s": score_s}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, model="tiny", data_dir=".r2w")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--half", choices=["cpu", "gpu"], help=argparse.SUPPRESS)  # internal: one device's run
    args = parser.parse_args(argv)
    common.setup(args.data_dir)  # torch threads left at torch's default, as this benchmark always had them
    if args.half:
        print(json.dumps(measure(args.model, args.prompts, args.data_dir)))
        return 0
    forwarded = ["--model", args.model, "--prompts", str(args.prompts), "--data-dir", args.data_dir]
    halves = {}
    for half in ("cpu", "gpu"):
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if half == "cpu" else {})}
        halves[half] = common.run_half("evaluation.benchmarks.backend_device_parity", ["--half", half, *forwarded], env)
    cpu, gpu = halves["cpu"], halves["gpu"]
    for name, h in halves.items():
        print(f"{name}: {h['device']}: generate {h['generate_s']:.2f} s, score {h['score_s']:.2f} s")
    if gpu["device"] == "cpu":
        print("no GPU visible: nothing to compare")
        return 0
    same = sum(a == b for a, b in zip(cpu["actions"], gpu["actions"], strict=True))
    diff = max(abs(x - y) for a, b in zip(cpu["scores"], gpu["scores"], strict=True) for x, y in zip(a, b, strict=True))
    argmax = sum(
        max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        for a, b in zip(cpu["scores"], gpu["scores"], strict=True)
    )
    n = len(cpu["actions"])
    print(f"greedy constrained actions equal: {same}/{n}; best-scored action equal: {argmax}/{n}")
    print(f"max |score cpu - score gpu| = {diff:.2e} nats (float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
