"""Distill stage: turn hinted teacher successes into hint-free SFT examples, then train a LoRA student.

The student must behave as if it had the hints without seeing them, so every example's prompt is the
teacher's prompt with the delimited hints block removed (verified to be exactly the base agent's
prompt), and anything that would still leak a hint into the training data is counted and dropped.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

from pydantic import BaseModel
from rapidfuzz import fuzz

from prompts.agent import HINTS_CLOSE, HINTS_OPEN, SYSTEM, strip_hints_block
from r2w.config import DistillConfig
from r2w.contracts import DistillExample, Hint, Message, Trajectory, content_hash

log = logging.getLogger(__name__)

# Completions are game actions: any of these means the teacher talked about its hints instead of acting.
HINT_REFERENCE = re.compile(
    r"\bhints?\b|as suggested|as advised|as instructed|according to the|past attempts|as the tip",
    re.IGNORECASE,
)
# partial_ratio of a very short hint against a long prompt matches by chance; short hints get the exact check only.
FUZZY_MIN_CHARS = 20
ROUNDTRIP_ATOL = 2e-3  # float32 logits: reloaded adapter / merged weights vs the in-memory model
COUNT_KEYS = (
    "steps_in",
    "hint_block_removed",
    "leak_prompt",
    "leak_completion",
    "duplicates",
    "capped",
    "train",
    "validation",
)


class PromptMismatchError(ValueError):
    """A de-hinted teacher prompt is not the base agent's prompt: training on it would teach the wrong input."""


class RoundTripError(RuntimeError):
    """A saved adapter or merged model does not reproduce the trained model's logits."""


# ---------------------------------------------------------------------------------------------- examples


def build_examples(
    trajectories: list[Trajectory], active_hints: list[Hint], cfg: DistillConfig, seed: int = 0
) -> tuple[list[DistillExample], dict[str, int]]:
    """One hint-free (prompt, action) example per teacher step, leak-checked, deduplicated, capped, split by task."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["not_successful"] = 0
    hint_texts = _normalised_hint_texts(active_hints)
    seen: set[str] = set()
    candidates: list[tuple[tuple, DistillExample]] = []
    for traj in trajectories:
        if not traj.episode.success:
            counts["not_successful"] += 1
            continue
        for step in traj.episode.steps:
            counts["steps_in"] += 1
            prompt, removed = student_prompt(step.prompt, traj.hints_block)
            counts["hint_block_removed"] += removed
            if _prompt_leaks(prompt, hint_texts, cfg.leakage_fuzzy_ratio):
                counts["leak_prompt"] += 1
                continue
            if HINT_REFERENCE.search(step.action):
                counts["leak_completion"] += 1
                continue
            example_id = example_hash(prompt, step.action)
            if example_id in seen:
                counts["duplicates"] += 1
                continue
            seen.add(example_id)
            example = DistillExample(
                example_id=example_id,
                task_id=traj.episode.task_id,
                category=traj.episode.category,
                prompt=prompt,
                completion=step.action,
                trajectory_id=traj.trajectory_id,
            )
            # Shorter successes first: long ones carry wandering (repeated open/close) the student would copy.
            candidates.append(((len(traj.episode.steps), traj.trajectory_id, step.index), example))
    kept = _cap_per_task(candidates, cfg.max_examples_per_task, counts)
    validation_tasks = split_tasks(sorted({e.task_id for e in kept}), cfg.validation_fraction, seed)
    examples = [
        e.model_copy(update={"split": "validation" if e.task_id in validation_tasks else "train"}) for e in kept
    ]
    counts["validation"] = sum(e.split == "validation" for e in examples)
    counts["train"] = len(examples) - counts["validation"]
    log.info("distill set: %s", counts)
    return examples, counts


def student_prompt(teacher_prompt: list[Message], hints_block: str) -> tuple[list[Message], int]:
    """Remove the hints block and prove what is left is the base agent's prompt (returns prompt, 1 if removed)."""
    prompt = strip_hints_block(teacher_prompt)
    if any(HINTS_OPEN in m.content or HINTS_CLOSE in m.content for m in prompt):
        raise PromptMismatchError("a hints marker survived strip_hints_block (block outside the system message?)")
    system = [m for m in prompt if m.role == "system"]
    if [m.content for m in system] != [SYSTEM]:
        raise PromptMismatchError("de-hinted system message differs from the base agent's system prompt")
    teacher_system = next(m.content for m in teacher_prompt if m.role == "system")
    if teacher_system != SYSTEM + hints_block:
        raise PromptMismatchError("teacher system message is not the base system prompt plus its recorded hints block")
    return prompt, int(teacher_system != SYSTEM)


def example_hash(prompt: list[Message], completion: str) -> str:
    return content_hash({"prompt": [m.model_dump() for m in prompt], "completion": completion})[:16]


def split_tasks(task_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A deterministic validation subset of whole tasks, so no task's states appear on both sides."""
    if fraction <= 0 or len(task_ids) < 2:
        return set()
    n = min(len(task_ids) - 1, max(1, round(fraction * len(task_ids))))
    ranked = sorted(task_ids, key=lambda t: content_hash({"seed": seed, "task_id": t}))
    return set(ranked[:n])


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _normalised_hint_texts(hints: list[Hint]) -> list[str]:
    return [t for t in (_normalise(h.text) for h in hints) if t]


def _prompt_leaks(prompt: list[Message], hint_texts: list[str], fuzzy_ratio: float) -> bool:
    for message in prompt:
        content = _normalise(message.content)
        for hint in hint_texts:
            if hint in content:
                return True
            if len(hint) >= FUZZY_MIN_CHARS and fuzz.partial_ratio(hint, content) >= fuzzy_ratio:
                return True
    return False


def _cap_per_task(
    candidates: list[tuple[tuple, DistillExample]], cap: int, counts: dict[str, int]
) -> list[DistillExample]:
    by_task: dict[str, list[tuple[tuple, DistillExample]]] = defaultdict(list)
    for key, example in candidates:
        by_task[example.task_id].append((key, example))
    kept = []
    for task_id in sorted(by_task):
        ranked = [e for _, e in sorted(by_task[task_id], key=lambda item: item[0])]
        kept.extend(ranked[:cap])
        counts["capped"] += max(0, len(ranked) - cap)
    return kept


# ---------------------------------------------------------------------------------------------- training


class StudentArtifacts(BaseModel):
    """What a distillation run produced, and the evidence that the saved weights are the trained ones."""

    adapter_dir: Path
    merged_dir: Path
    train_losses: list[float]
    eval_loss: float | None
    steps: int
    seconds: float  # whole stage wall time: load, train, save, merge, verify
    tokens_per_s: float  # non-padding tokens trained in this session / train seconds
    roundtrip_max_abs_diff: float
    train_seconds: float = 0.0
    tokens_trained: int = 0
    resumed_from_step: int = 0  # 0: started fresh
    adapter_logit_delta: float = 0.0  # max |logits(trained) - logits(base)| on the check prompts


def train_sft(
    examples: list[DistillExample],
    base_model: Path,
    cfg: DistillConfig,
    out_dir: Path,
    seed: int = 0,
    resume: bool = True,
    *,
    save_steps: int | None = None,
) -> StudentArtifacts:
    """LoRA SFT on the completions only; saves adapter and merged model, and proves both reload to the same logits."""
    import torch
    from trl import SFTTrainer

    started = time.perf_counter()
    out_dir = Path(out_dir)
    train = [e for e in examples if e.split == "train"]
    validation = [e for e in examples if e.split == "validation"]
    if not train:
        raise ValueError("no training examples: nothing to distill")
    checkpoints = _prepare_checkpoints(out_dir, _run_fingerprint(examples, base_model, cfg, seed), resume)
    last = _last_checkpoint(checkpoints) if resume else None

    tokenizer = _load_tokenizer(base_model)
    # float32 master weights: bf16=True means autocast compute, and the round trip then compares like with like.
    model = _load_model(base_model, torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, checkpoints, seed, save_steps),
        train_dataset=to_sft_dataset(train),
        eval_dataset=to_sft_dataset(validation) if validation else None,
        processing_class=tokenizer,
        peft_config=peft_lora_config(cfg),
    )
    resumed_from = _checkpoint_step(last) if last else 0
    if last:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    eval_loss = trainer.evaluate()["eval_loss"] if validation else None
    train_seconds = float(result.metrics.get("train_runtime", 0.0))
    tokens = int(getattr(trainer, "_total_train_tokens", 0))
    losses = loss_history(trainer.state.log_history)

    # unwrap: Accelerate patches forward with bf16 autocast, which would make the reference a bf16 computation
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    adapter_dir = out_dir / "adapter"
    _write_atomically(adapter_dir, trained.save_pretrained)
    check_ids = _check_inputs(tokenizer, train[:2])
    reference, base_logits = _trained_and_base_logits(trained, check_ids)
    del trainer, trained, model
    merged_dir = out_dir / "merged"
    diff = _merge_and_verify(base_model, adapter_dir, merged_dir, tokenizer, check_ids, reference)

    artifacts = StudentArtifacts(
        adapter_dir=adapter_dir,
        merged_dir=merged_dir,
        train_losses=losses,
        eval_loss=None if eval_loss is None else float(eval_loss),
        steps=int(result.global_step),
        seconds=time.perf_counter() - started,
        tokens_per_s=tokens / train_seconds if train_seconds > 0 else 0.0,
        roundtrip_max_abs_diff=diff,
        train_seconds=train_seconds,
        tokens_trained=tokens,
        resumed_from_step=resumed_from,
        adapter_logit_delta=max(float((r - b).abs().max()) for r, b in zip(reference, base_logits, strict=True)),
    )
    (out_dir / "student.json").write_text(artifacts.model_dump_json(indent=2))
    return artifacts


def sft_config(cfg: DistillConfig, checkpoints: Path, seed: int, save_steps: int | None = None, **overrides):
    """TRL settings from the distill config; TRL 1.16 defaults bf16 and gradient checkpointing on, so both are set."""
    from trl import SFTConfig

    settings = dict(
        output_dir=str(checkpoints),
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=True,
        report_to=[],
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps or default_save_steps(cfg.max_steps),
        save_total_limit=2,
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        max_length=1024,
    )
    settings.update(overrides)
    return SFTConfig(**settings)


def default_save_steps(max_steps: int) -> int:
    """About four checkpoints a run, at most 10 steps apart: a kill loses minutes, not the run."""
    return max(1, min(10, max_steps // 4))


def peft_lora_config(cfg: DistillConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def to_sft_dataset(examples: list[DistillExample]):
    """Conversational prompt/completion rows: TRL masks the prompt, so the loss is on the action only."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [m.model_dump() for m in e.prompt],
                "completion": [{"role": "assistant", "content": e.completion}],
            }
            for e in examples
        ]
    )


def loss_history(log_history: list[dict]) -> list[float]:
    """Per-step training losses; after a resume the trainer's history includes the steps before the kill."""
    return [float(h["loss"]) for h in log_history if "loss" in h and "step" in h]


def _run_fingerprint(examples: list[DistillExample], base_model: Path, cfg: DistillConfig, seed: int) -> str:
    # max_steps is left out so a longer run may continue a shorter one.
    return content_hash(
        {
            "examples": sorted((e.example_id, e.split) for e in examples),
            "base_model": str(Path(base_model).resolve()),
            "cfg": cfg.model_dump(mode="json", exclude={"max_steps"}),
            "seed": seed,
        }
    )[:16]


def _prepare_checkpoints(out_dir: Path, fingerprint: str, resume: bool) -> Path:
    """Checkpoints of another data/config/seed are never resumed: they would silently train something else."""
    checkpoints = out_dir / "checkpoints"
    marker = out_dir / "run.json"
    previous = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
    if checkpoints.exists() and (not resume or previous != fingerprint):
        if resume:
            log.warning("discarding checkpoints in %s: they belong to a different run", checkpoints)
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    for broken in [p for p in checkpoints.glob("checkpoint-*") if not _is_complete(p)]:
        log.warning("removing %s: killed while saving", broken)
        shutil.rmtree(broken)
    marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return checkpoints


def _last_checkpoint(checkpoints: Path) -> Path | None:
    complete = [p for p in checkpoints.glob("checkpoint-*") if _is_complete(p)]
    return max(complete, key=_checkpoint_step) if complete else None


def _is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: without a readable one, the save was cut short."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _checkpoint_step(path: Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1])


def _load_tokenizer(base_model: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(path: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def _write_atomically(target: Path, write) -> None:
    """Write into a temp folder next to target, then swap it in: a crash never leaves a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staged)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staged.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _check_inputs(tokenizer, examples: list[DistillExample]) -> list:
    """Full training sequences (prompt + action) used to compare logits across the save/reload round trip."""
    ids = []
    for e in examples:
        messages = [m.model_dump() for m in e.prompt] + [{"role": "assistant", "content": e.completion}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids.append(tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    return ids


def _logits(model, check_ids: list) -> list:
    import torch

    with torch.inference_mode():
        return [model(input_ids=ids).logits.float() for ids in check_ids]


def _trained_and_base_logits(peft_model, check_ids: list) -> tuple[list, list]:
    import torch

    peft_model.to(torch.float32)
    reference = _logits(peft_model, check_ids)
    with peft_model.disable_adapter():
        base = _logits(peft_model, check_ids)
    return reference, base


def _merge_and_verify(base_model: Path, adapter_dir: Path, merged_dir: Path, tokenizer, check_ids, reference) -> float:
    """Reload base+adapter from disk, merge in float32, save, reload the merged folder: all must match training."""
    import torch
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(_load_model(base_model, torch.float32), str(adapter_dir)).eval()
    adapter_diff = _max_diff(reference, _logits(reloaded, check_ids))
    _write_atomically(merged_dir, partial(_save_merged, reloaded.merge_and_unload(), tokenizer, base_model))
    del reloaded
    merged_diff = _max_diff(reference, _logits(_load_model(merged_dir, torch.float32).eval(), check_ids))
    diff = max(adapter_diff, merged_diff)
    if diff > ROUNDTRIP_ATOL:
        raise RoundTripError(
            f"saved student does not reproduce the trained logits: adapter {adapter_diff:.2e}, "
            f"merged {merged_diff:.2e} (tolerance {ROUNDTRIP_ATOL:.0e})"
        )
    log.info("round trip ok: adapter %.2e, merged %.2e", adapter_diff, merged_diff)
    return diff


def _save_merged(model, tokenizer, base_model: Path, folder: Path) -> None:
    # float32: a LoRA delta smaller than a bf16 step of the base weight would be rounded away; servers cast on load.
    from r2w.models import READY

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / READY).write_text(json.dumps({"source": "r2w-distill", "base": str(base_model)}, indent=2))


def _max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------- prefect

from prefect import task  # noqa: E402 - after the plain functions, which must not need Prefect
from prefect.cache_policies import NO_CACHE  # noqa: E402

build_examples_task = task(name="build-distill-set", cache_policy=NO_CACHE)(build_examples)
train_task = task(name="train-student", retries=0, cache_policy=NO_CACHE)(train_sft)
