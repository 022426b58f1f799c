"""How much does r2w's distill wrapper cost over a bare TRL script, and what does padding-free training buy?

Three runs on the same fixed synthetic agent-style prompt/completion set (64 examples), same LoRA and
trainer settings, N optimizer steps each:

1. r2w `r2w.trainers.train_sft` (checkpoints, adapter + merged save, round-trip verification);
2. a bare TRL `SFTTrainer` script with identical settings (same checkpoint interval, no save/merge/verify);
3. the bare script with `padding_free=True` (sequences of a batch flattened into one row; transformers
   builds a block-diagonal mask from position_ids, so sequences still do not attend to each other).

Tokens/s counts non-padding tokens trained / train-loop seconds (the Trainer's `train_runtime`), so the
training-loop overhead and the end-to-end wall time are reported separately.

Command (repo root, venv active; keep smollm2 runs short on a 2-core box):

    python -m evaluation.benchmarks.sft_overhead --model smollm2 --steps 4
    python -m evaluation.benchmarks.sft_overhead --model tiny --steps 10
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from evaluation.benchmarks import common
from r2w.agent_prompt import build_messages
from r2w.config import DistillConfig
from r2w.contracts import DistillExample
from r2w.models import resolve_model
from r2w.trainers import train_sft
from r2w.training import peft_lora_config

ROOMS = ["kitchen", "bedroom", "bathroom", "living room", "pantry", "laundry room"]
PLACES = ["fridge", "dresser", "cupboard", "shoe cabinet", "laundry basket", "bookcase", "desk drawer"]
ITEMS = ["red apple", "white socks", "clean plate", "banana", "blue shoe", "dirty towel", "milk", "pen", "mug"]


def synthetic_examples(n: int = 64, seed: int = 0) -> list:
    """Agent prompts with 0-3 history turns and varied observations, so batch lengths vary as in real runs."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        item, place, room = rng.choice(ITEMS), rng.choice(PLACES), rng.choice(ROOMS)
        others = rng.sample(PLACES, k=rng.randint(1, 4))
        obs = f"You are in the {room}. " + " ".join(f"You see a closed {p}." for p in others)
        obs += f" A {item} is on the floor."
        valid = sorted({f"open {p}" for p in others} | {f"take {item}", f"put {item} in {place}", "look around"})
        history = [(f"open {p}", f"You open the {p}. It is empty.") for p in others[: rng.randint(0, 3)]]
        task = f"Tidy up the house: put every misplaced item where it belongs (game {i})."
        prompt = build_messages(task, obs, valid, history)
        action = rng.choice([f"take {item}", f"put {item} in {place}", f"open {place}"])
        examples.append(
            DistillExample(
                example_id=f"bench-{i}",
                task_id=f"bench-{i}",
                category="twc",
                prompt=prompt,
                completion=action,
                trajectory_id=f"bench-{i}",
            )
        )
    return examples


def distill_config(steps: int) -> DistillConfig:
    return DistillConfig(
        max_steps=steps,
        learning_rate=2e-4,
        batch_size=4,
        grad_accum=1,
        bf16=True,
        gradient_checkpointing=False,
        validation_fraction=0.0,
    )


def run_r2w(examples: list, base: Path, steps: int, save_steps: int, workdir: Path) -> dict:
    art = train_sft(examples, base, distill_config(steps), workdir / "r2w", resume=False, save_steps=save_steps)
    return {
        "tokens_per_s": art.tokens_per_s,
        "train_s": art.train_seconds,
        "wall_s": art.seconds,
        "first_loss": art.train_losses[0],
        "roundtrip": art.roundtrip_max_abs_diff,
    }


def run_bare_trl(
    examples: list, base: Path, steps: int, save_steps: int, workdir: Path, padding_free: bool = False
) -> dict:
    """What a user would write by hand with TRL + PEFT: no r2w code on the training path."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg = distill_config(steps)
    started = time.perf_counter()
    rows = [
        {"prompt": [m.model_dump() for m in e.prompt], "completion": [{"role": "assistant", "content": e.completion}]}
        for e in examples
    ]
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(workdir / ("bare-pf" if padding_free else "bare")),
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        seed=0,
        data_seed=0,
        padding_free=padding_free,
        max_length=None if padding_free else 1024,  # TRL refuses padding_free with max_length and no packing
    )
    lora = peft_lora_config(cfg)  # a plain peft.LoraConfig: the same adapter as r2w's by construction
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    result = trainer.train()
    train_s = float(result.metrics["train_runtime"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_s": trainer._total_train_tokens / train_s,
        "train_s": train_s,
        "wall_s": time.perf_counter() - started,
        "first_loss": losses[0],
    }


def report(model: str, steps: int, runs: dict[str, dict]) -> str:
    bare, ours, free = runs["bare TRL"], runs["r2w train_sft"], runs["bare TRL padding_free"]
    lines = [f"model={model} steps={steps} batch=4 LoRA r16 bf16-autocast, 1 thread"]
    lines.append(f"{'run':<24}{'tokens/s':>10}{'train s':>10}{'s/step':>9}{'wall s':>9}{'loss@1':>9}")
    for name, r in runs.items():
        lines.append(
            f"{name:<24}{r['tokens_per_s']:>10.1f}{r['train_s']:>10.1f}{r['train_s'] / steps:>9.2f}"
            f"{r['wall_s']:>9.1f}{r['first_loss']:>9.3f}"
        )
    loop = 100 * (bare["tokens_per_s"] - ours["tokens_per_s"]) / bare["tokens_per_s"]
    wall = 100 * (ours["wall_s"] - bare["wall_s"]) / bare["wall_s"]
    gain = 100 * (free["tokens_per_s"] - bare["tokens_per_s"]) / bare["tokens_per_s"]
    lines.append(f"r2w overhead: training loop {loop:+.1f}% tokens/s lost; end-to-end wall {wall:+.1f}%")
    lines.append(f"r2w round trip max |logit diff| (float32): {ours['roundtrip']:.2e}")
    lines.append(f"padding_free gain: {gain:+.1f}% tokens/s (loss@1 should match the padded run)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, data_dir=".r2w", threads=True)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--save-steps", type=int, default=None, help="checkpoint interval (default: steps // 2)")
    args = parser.parse_args(argv)
    common.setup(args.data_dir, args.threads)

    base = resolve_model(args.model, args.data_dir)
    examples = synthetic_examples()
    save_steps = args.save_steps or max(1, args.steps // 2)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sft-overhead-") as tmp:
        workdir = Path(tmp)
        # one unreported step first: the first run in a process pays one-off kernel/page-cache warm-up
        run_bare_trl(examples, base, 1, 1, workdir / "warmup")
        runs["bare TRL"] = run_bare_trl(examples, base, args.steps, save_steps, workdir)
        runs["r2w train_sft"] = run_r2w(examples, base, args.steps, save_steps, workdir)
        runs["bare TRL padding_free"] = run_bare_trl(examples, base, args.steps, save_steps, workdir, True)
    print(report(args.model, args.steps, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
