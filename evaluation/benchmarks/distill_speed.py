"""Seconds per optimizer step of each distillation method, through r2w's own trainers (r2w/trainers.py).

Same fixed synthetic agent-style set for every method (64 prompts with 0-3 history turns, from
sft_overhead.synthetic_examples): SFT trains on the action, DPO on (action, another valid action),
on-policy samples `distill.onpolicy.samples` completions per prompt and scores them with the hints block.
All with LoRA r16 on q/k/v/o/up/down, bf16 autocast (float32 master weights), gradient checkpointing off,
1 thread; batch 4 unless --batch. Training runs on the GPU when torch sees one (r2w/training.py).

`--examples DIR` trains on a stored distill-examples dataset instead (SFT rows of a real run, e.g. tidy6's).
`--model arch:smollm2-360m` (or -135m, -1.7b) builds that SmolLM2 architecture with RANDOM weights and the
SmolLM2 tokenizer (`--tokenizer DIR`): no larger model's weights can be fetched here, and speed does not
depend on the weights' values, so this measures the training step of a larger model, not its skill.

s/step = the Trainer's train_runtime / steps (the training loop only); wall s adds load, save, merge and
the round-trip check. The machine's load average is printed with the figures: on a shared 2-core box it
moves them a lot.

Command (repo root, venv active; keep smollm2 runs short on a 2-core box):

    python -m evaluation.benchmarks.distill_speed --model smollm2 --steps 4
    python -m evaluation.benchmarks.distill_speed --model tiny --steps 4 --methods sft dpo onpolicy
    python -m evaluation.benchmarks.distill_speed --model arch:smollm2-360m --tokenizer <smollm2 dir> \
        --examples .r2w-tidy6/datasets/distill-examples/<id> --methods sft --steps 20 --batch 8
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

from evaluation.benchmarks import common
from evaluation.benchmarks.sft_overhead import synthetic_examples
from r2w.agent_prompt import render_hints_block
from r2w.config import DistillConfig
from r2w.contracts import DistillExample, Hint
from r2w.datasets import load_records
from r2w.models import resolve_model
from r2w.trainers import train_student

METHODS = ("sft", "dpo", "onpolicy")

# Published SmolLM2 shapes (HuggingFaceTB/SmolLM2-*-Instruct config.json); 135m is the local model's own.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
ARCHITECTURES = {  # name: (shape in SHAPE_FIELDS order, rope_theta)
    "smollm2-135m": ((576, 1536, 30, 9, 3), 100000.0),
    "smollm2-360m": ((960, 2560, 32, 15, 5), 100000.0),
    "smollm2-1.7b": ((2048, 8192, 24, 32, 32), 130000.0),
}


def build_architecture(name: str, tokenizer_dir: Path, folder: Path) -> Path:
    """A randomly initialised SmolLM2-shaped model (float32) with the real tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if name not in ARCHITECTURES:
        raise SystemExit(f"--model arch:{name}: unknown architecture; expected one of {sorted(ARCHITECTURES)}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_theta=ARCHITECTURES[name][1],
        **dict(zip(SHAPE_FIELDS, ARCHITECTURES[name][0], strict=True)),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def stored_examples(folder: str) -> list:
    """A stored distill-examples dataset, every row used for training."""
    return [e.model_copy(update={"split": "train"}) for e in load_records(folder, DistillExample)]


def examples_for(method: str, stored: list | None, folder: str | None) -> list:
    """The stored rows (DPO needs their `rejected` actions) or the shared synthetic set."""
    if stored is None:
        return method_examples(method)
    if method != "sft" and any(e.rejected is None for e in stored):
        raise SystemExit(f"--examples {folder}: rows have no rejected action; use --methods sft with it")
    return stored


def method_examples(method: str) -> list:
    """The shared synthetic set, with a rejected action (DPO) or the teacher's hints block (on-policy)."""
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


def run(method: str, base: Path, steps: int, workdir: Path, rows: list, batch: int = 4) -> dict:
    import torch

    cfg = DistillConfig(
        method=method,
        max_steps=steps,
        learning_rate=2e-4,
        batch_size=batch,
        bf16=True,
        gradient_checkpointing=False,
        validation_fraction=0.0,
        save_steps=steps,
    )
    load_before = os.getloadavg()[0]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    art = train_student(rows, base, cfg, workdir / method, resume=False)
    return {
        "tokens_per_s": art.tokens_per_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
        "s_per_step": art.train_seconds / art.steps,
        "train_s": art.train_seconds,
        "wall_s": art.seconds,
        "first_loss": art.train_losses[0],
        "last_loss": art.train_losses[-1],
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(
        __doc__,
        model="smollm2",
        model_help="smollm2, tiny, a model folder, or arch:<name> (random)",
        data_dir=".r2w",
        threads=True,
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for arch:<name> (default: smollm2's)")
    parser.add_argument("--examples", default=None, help="stored distill-examples dataset folder (SFT rows)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["sft", "dpo"])
    args = parser.parse_args(argv)
    common.setup(args.data_dir, args.threads)
    import torch

    rows = {}
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as tmp:
        if args.model.startswith("arch:"):
            tokenizer = Path(args.tokenizer) if args.tokenizer else resolve_model("smollm2", args.data_dir)
            base = build_architecture(args.model.removeprefix("arch:"), tokenizer, Path(tmp) / "base")
        else:
            base = resolve_model(args.model, args.data_dir)
        stored = stored_examples(args.examples) if args.examples else None  # read once, used by every run
        warmup = examples_for("sft", stored, args.examples)
        run("sft", base, 1, Path(tmp) / "warmup", warmup, args.batch)  # unreported: kernels, page cache
        for method in args.methods:
            examples = examples_for(method, stored, args.examples)
            rows[method] = run(method, base, args.steps, Path(tmp), examples, args.batch)
        params = parameter_count(base)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} thread(s)"
    data = f"examples={args.examples}" if args.examples else "64 synthetic examples"
    print(
        f"model={args.model} ({params / 1e6:.0f}M params) steps={args.steps} batch={args.batch} LoRA r16 "
        f"bf16-autocast on {device}; {data}"
    )
    print(
        f"{'method':<10}{'s/step':>8}{'tok/s':>9}{'train s':>9}{'wall s':>8}{'loss@1':>9}{'loss@end':>10}"
        f"{'peak GiB':>10}{'load avg':>10}"
    )
    for method, r in rows.items():
        print(
            f"{method:<10}{r['s_per_step']:>8.3f}{r['tokens_per_s']:>9.0f}{r['train_s']:>9.1f}{r['wall_s']:>8.1f}"
            f"{r['first_loss']:>9.4f}{r['last_loss']:>10.4f}{r['peak_gib']:>10.2f}{r['load']:>10.1f}"
        )
    return 0


def parameter_count(folder: Path) -> int:
    """Parameters stored in a model folder's safetensors (tied embeddings counted once)."""
    from safetensors import safe_open

    total = 0
    for shard in Path(folder).glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


if __name__ == "__main__":
    sys.exit(main())
