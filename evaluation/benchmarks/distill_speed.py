"""Seconds per optimizer step of each distillation method, through r2w's own trainers (tasks/distill.py).

Same fixed synthetic agent-style set for every method (64 prompts with 0-3 history turns, from
sft_overhead.synthetic_examples): SFT trains on the action, DPO on (action, another valid action),
on-policy samples `distill.onpolicy.samples` completions per prompt and scores them with the hints block.
All with batch 4, LoRA r16 on q/k/v/o/up/down, bf16 autocast, gradient checkpointing off, 1 thread.

s/step = the Trainer's train_runtime / steps (the training loop only); wall s adds load, save, merge and
the round-trip check. The machine's load average is printed with the figures: on a shared 2-core box it
moves them a lot.

Command (repo root, venv active; keep smollm2 runs short on a 2-core box):

    python -m evaluation.benchmarks.distill_speed --model smollm2 --steps 4
    python -m evaluation.benchmarks.distill_speed --model tiny --steps 4 --methods sft dpo onpolicy
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from r2w.runtime import configure_environment, set_torch_threads

METHODS = ("sft", "dpo", "onpolicy")


def method_examples(method: str) -> list:
    """The shared synthetic set, with a rejected action (DPO) or the teacher's hints block (on-policy)."""
    from evaluation.benchmarks.sft_overhead import synthetic_examples
    from prompts.agent import render_hints_block
    from r2w.contracts import Hint

    text = "Open a closed container before you try to put an item inside it."
    hint = Hint(hint_id=Hint.make_id(text, "twc"), text=text, applicability="When it is closed", category="twc")
    out = []
    for e in synthetic_examples():
        valid = e.prompt[-1].content.split("Valid actions: ")[1].split("\n")[0].split(", ")
        if method == "dpo":
            e = e.model_copy(update={"rejected": next(a for a in valid if a != e.completion)})
        elif method == "onpolicy":
            e = e.model_copy(update={"teacher_context": render_hints_block([hint])})
        out.append(e)
    return out


def run(method: str, base: Path, steps: int, workdir: Path) -> dict:
    from r2w.config import DistillConfig
    from tasks.distill import train_student

    cfg = DistillConfig(
        method=method,
        max_steps=steps,
        learning_rate=2e-4,
        batch_size=4,
        bf16=True,
        gradient_checkpointing=False,
        validation_fraction=0.0,
        save_steps=steps,
    )
    load_before = os.getloadavg()[0]
    art = train_student(method_examples(method), base, cfg, workdir / method, resume=False)
    return {
        "s_per_step": art.train_seconds / art.steps,
        "train_s": art.train_seconds,
        "wall_s": art.seconds,
        "first_loss": art.train_losses[0],
        "last_loss": art.train_losses[-1],
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["sft", "dpo"])
    parser.add_argument("--data-dir", default=".r2w")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    configure_environment(args.data_dir)  # before transformers/prefect are imported
    set_torch_threads(args.threads)
    from r2w.models import resolve_model

    base = resolve_model(args.model, args.data_dir)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as tmp:
        run("sft", base, 1, Path(tmp) / "warmup")  # unreported: one-off kernel/page-cache warm-up
        for method in args.methods:
            rows[method] = run(method, base, args.steps, Path(tmp))
    print(f"model={args.model} steps={args.steps} batch=4 LoRA r16 bf16-autocast, {args.threads} thread(s)")
    print(f"{'method':<10}{'s/step':>8}{'train s':>9}{'wall s':>8}{'loss@1':>9}{'loss@end':>10}{'load avg':>10}")
    for method, r in rows.items():
        print(
            f"{method:<10}{r['s_per_step']:>8.2f}{r['train_s']:>9.1f}{r['wall_s']:>8.1f}"
            f"{r['first_loss']:>9.4f}{r['last_loss']:>10.4f}{r['load']:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
