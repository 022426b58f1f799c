"""LoRA training machinery shared by every distillation method (SFT, DPO, on-policy).

What a method changes is only its TRL trainer; everything a killed or finished run relies on lives
here once: checkpoints that are resumed only by the same run, atomic saves, and the proof that the
saved adapter and the merged model reproduce the trained model's logits before anything is registered.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from functools import partial
from pathlib import Path

from r2w.config import DistillConfig
from r2w.contracts import DistillExample, content_hash
from r2w.distill_data import conversation_messages
from r2w.models import CHATML_TRAINING_TEMPLATE, READY

log = logging.getLogger(__name__)

ROUNDTRIP_ATOL = 2e-3  # float32 logits: reloaded adapter / merged weights vs the in-memory model


class RoundTripError(RuntimeError):
    """A saved adapter or merged model does not reproduce the trained model's logits."""


def trainer_settings(cfg: DistillConfig, checkpoints: Path, seed: int, save_steps: int | None = None) -> dict:
    """TrainingArguments every method shares; TRL 1.16 defaults bf16 and gradient checkpointing ON, so both are set."""
    import torch

    return dict(
        output_dir=str(checkpoints),
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),  # a GPU when there is one; the Trainer moves the model there
        report_to=[],
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps or cfg.save_steps or default_save_steps(cfg.max_steps),
        save_total_limit=2,
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


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


def log_series(log_history: list[dict], key: str = "loss") -> list[float]:
    """Per-step values of one logged metric; after a resume the trainer's history includes the steps before the kill."""
    return [float(h[key]) for h in log_history if key in h and "step" in h]


# ---------------------------------------------------------------------------------------------- checkpoints


def run_fingerprint(examples: list[DistillExample], base_model: Path, cfg: DistillConfig, seed: int) -> str:
    # max_steps and save_steps are left out so a longer run may continue a shorter one.
    return content_hash(
        {
            "examples": sorted((e.example_id, e.split) for e in examples),
            "base_model": str(Path(base_model).resolve()),
            "cfg": cfg.model_dump(mode="json", exclude={"max_steps", "save_steps"}),
            "seed": seed,
        }
    )[:16]


def prepare_checkpoints(out_dir: Path, fingerprint: str, resume: bool) -> Path:
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


def last_checkpoint(checkpoints: Path) -> Path | None:
    complete = [p for p in checkpoints.glob("checkpoint-*") if _is_complete(p)]
    return max(complete, key=checkpoint_step) if complete else None


def _is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: without a readable one, the save was cut short."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1])


# ---------------------------------------------------------------------------------------------- models on disk


def load_tokenizer(base_model: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def assistant_masking_tokenizer(tokenizer, conversations: list[list[dict]], tools: list | None = None):
    """A copy of the tokenizer whose chat template marks assistant turns for TRL's `assistant_only_loss`.

    Its own template if it has `{% generation %}` markers; else TRL's training variant of it (TRL knows Qwen,
    Llama 3, Gemma, ...); else r2w's ChatML one (SmolLM2 and the test model). Whichever it is, it must render every
    training conversation byte-for-byte as the model's own template does, or the student would learn on inputs
    it never sees at inference: that is checked here and a difference stops the run. `tools` holds each
    conversation's tools (native tool path, r2w/tool_calls.py; None where the template gets none), rendered as
    TRL renders them.
    """
    import copy

    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = tokenizer.chat_template
    if has_generation_markers(own):
        template = own
    else:
        try:
            template = get_training_chat_template(tokenizer) or own
        except ValueError:  # a template TRL has no training variant of
            template = CHATML_TRAINING_TEMPLATE
    for i, (messages, row_tools) in enumerate(zip(conversations, tools or [None] * len(conversations), strict=True)):
        if tokenizer.apply_chat_template(messages, tokenize=False, tools=row_tools) != tokenizer.apply_chat_template(
            messages, tokenize=False, chat_template=template, tools=row_tools
        ):
            raise ValueError(
                f"distill: training conversation {i}: the assistant-masking chat template renders it differently "
                f"from {getattr(tokenizer, 'name_or_path', 'the model')}'s own template; give the model a chat "
                "template with {% generation %} markers around assistant turns"
            )
    masked = copy.deepcopy(tokenizer)
    masked.chat_template = template
    return masked


def load_model(path: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def write_atomically(target: Path, write) -> None:
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


# ---------------------------------------------------------------------------------------------- round trip


def check_inputs(tokenizer, examples: list[DistillExample]) -> list:
    """Full sequences (prompt + action) used to compare logits across the save/reload round trip."""
    ids = []
    for e in examples:
        text = tokenizer.apply_chat_template(conversation_messages(e), tokenize=False, tools=e.tools or None)
        ids.append(tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    return ids


def logits(model, check_ids: list) -> list:
    import torch

    device = next(model.parameters()).device  # the trained model may sit on a GPU; compare on the CPU
    with torch.inference_mode():
        return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in check_ids]


def trained_and_base_logits(peft_model, check_ids: list) -> tuple[list, list]:
    import torch

    peft_model.to(torch.float32)
    reference = logits(peft_model, check_ids)
    with peft_model.disable_adapter():
        base = logits(peft_model, check_ids)
    return reference, base


def merge_and_verify(base_model: Path, adapter_dir: Path, merged_dir: Path, tokenizer, check_ids, reference) -> float:
    """Reload base+adapter from disk, merge in float32, save, reload the merged folder: all must match training."""
    import torch
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load_model(base_model, torch.float32), str(adapter_dir)).eval()
    adapter_diff = max_diff(reference, logits(reloaded, check_ids))
    write_atomically(merged_dir, partial(_save_merged, reloaded.merge_and_unload(), tokenizer, base_model))
    del reloaded
    merged_diff = max_diff(reference, logits(load_model(merged_dir, torch.float32).eval(), check_ids))
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

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / READY).write_text(json.dumps({"source": "r2w-distill", "base": str(base_model)}, indent=2))


def max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
