"""Train a LoRA student with TRL, one trainer per `distill.method`; save, merge and verify the weights.

The plain training function, free of Prefect, so it runs wherever torch/TRL/PEFT do (a GPU box without the
orchestration stack, benchmarks, tests); tasks/distill.py wraps it as the cached `train-student` stage.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import BaseModel

from r2w.agent_prompt import is_chat_system
from r2w.config import DistillConfig
from r2w.contracts import DistillExample
from r2w.distill_data import in_text_fallback, teacher_prompt, to_dpo_dataset, to_onpolicy_dataset, to_sft_dataset
from r2w.tool_calls import TEXT_FALLBACK, tool_format
from r2w.training import (
    assistant_masking_tokenizer,
    check_inputs,
    checkpoint_step,
    last_checkpoint,
    load_model,
    load_tokenizer,
    log_series,
    merge_and_verify,
    peft_lora_config,
    prepare_checkpoints,
    run_fingerprint,
    trained_and_base_logits,
    trainer_settings,
    write_atomically,
)

log = logging.getLogger(__name__)

SERIES = {  # per-step metrics each method's trainer logs, kept in the artifacts next to the loss
    "sft": ("mean_token_accuracy",),
    "dpo": ("rewards/margins", "rewards/accuracies"),
    "onpolicy": ("self_distillation/distillation_loss", "completions/mean_length"),
}


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
    method: str = "sft"
    base_model: Path | None = None  # the weights the adapter sits on (the champion's merged model in a continual round)
    parent_version: str | None = None  # registry version trained on top of (init_from=champion)
    train_metrics: dict[str, list[float]] = {}  # per-step method metrics, e.g. DPO reward margins
    threads: int = 0  # torch threads it trained on (runtime.train_threads; 0: not recorded)

    @property
    def s_per_step(self) -> float:
        trained = self.steps - self.resumed_from_step
        return self.train_seconds / trained if trained > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "train.final_loss": self.train_losses[-1],
            "train.tokens_per_s": self.tokens_per_s,
            "train.s_per_step": self.s_per_step,
        } | ({"train.threads": float(self.threads)} if self.threads else {})


def train_student(
    examples: list[DistillExample],
    base_model: Path,
    cfg: DistillConfig,
    out_dir: Path,
    seed: int = 0,
    resume: bool = True,
    parent_version: str | None = None,
    *,
    save_steps: int | None = None,
) -> StudentArtifacts:
    """Train a LoRA adapter with `cfg.method` on top of base_model; resume, save adapter + merged, verify both."""
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    train = [e for e in examples if e.split == "train"]
    validation = [e for e in examples if e.split == "validation"]
    if not train:
        raise ValueError(f"no training examples: nothing to distill ({cfg.method})")
    if cfg.method == "dpo" and (missing := [e.example_id for e in examples if e.rejected is None]):
        raise ValueError(f"DPO needs a rejected action on every example; missing on {len(missing)}: {missing[:3]}")
    checkpoints = prepare_checkpoints(out_dir, run_fingerprint(examples, base_model, cfg, seed), resume)
    last = last_checkpoint(checkpoints) if resume else None

    tokenizer = load_tokenizer(base_model)
    train, validation = in_student_format(train, tokenizer), in_student_format(validation, tokenizer)
    # float32 master weights: bf16=True means autocast compute, and the round trip then compares like with like.
    model = load_model(base_model, torch.float32)
    settings = trainer_settings(cfg, checkpoints, seed, save_steps)
    make_trainer = {"sft": _sft_trainer, "dpo": _dpo_trainer, "onpolicy": _onpolicy_trainer}[cfg.method]
    trainer = make_trainer(cfg, settings, model, tokenizer, train, validation)
    resumed_from = checkpoint_step(last) if last else 0
    if last:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    eval_loss = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
    train_seconds = float(result.metrics.get("train_runtime", 0.0))
    tokens = int(getattr(trainer, "_total_train_tokens", 0))
    history = trainer.state.log_history

    # unwrap: Accelerate patches forward with bf16 autocast, which would make the reference a bf16 computation
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    adapter_dir = out_dir / "adapter"
    write_atomically(adapter_dir, trained.save_pretrained)
    check_ids = check_inputs(tokenizer, train[:2])
    reference, base_logits = trained_and_base_logits(trained, check_ids)
    del trainer, trained, model
    merged_dir = out_dir / "merged"
    diff = merge_and_verify(base_model, adapter_dir, merged_dir, tokenizer, check_ids, reference)

    artifacts = StudentArtifacts(
        adapter_dir=adapter_dir,
        merged_dir=merged_dir,
        train_losses=log_series(history),
        eval_loss=None if eval_loss is None else float(eval_loss),
        steps=int(result.global_step),
        seconds=time.perf_counter() - started,
        tokens_per_s=tokens / train_seconds if train_seconds > 0 and tokens else 0.0,
        roundtrip_max_abs_diff=diff,
        train_seconds=train_seconds,
        tokens_trained=tokens,
        resumed_from_step=resumed_from,
        adapter_logit_delta=max(float((r - b).abs().max()) for r, b in zip(reference, base_logits, strict=True)),
        method=cfg.method,
        base_model=Path(base_model),
        parent_version=parent_version,
        train_metrics={key: log_series(history, key) for key in SERIES[cfg.method]},
    )
    (out_dir / "student.json").write_text(artifacts.model_dump_json(indent=2))
    return artifacts


def train_sft(examples: list[DistillExample], base_model: Path, cfg: DistillConfig, *args, **kw) -> StudentArtifacts:
    """train_student with method=sft, whatever cfg says."""
    return train_student(examples, base_model, _with_method(cfg, "sft"), *args, **kw)


def train_dpo(pairs: list[DistillExample], base_model: Path, cfg: DistillConfig, *args, **kw) -> StudentArtifacts:
    """train_student with method=dpo, whatever cfg says."""
    return train_student(pairs, base_model, _with_method(cfg, "dpo"), *args, **kw)


def train_onpolicy(examples: list[DistillExample], base_model: Path, cfg: DistillConfig, *args, **kw):
    """train_student with method=onpolicy, whatever cfg says."""
    return train_student(examples, base_model, _with_method(cfg, "onpolicy"), *args, **kw)


def _with_method(cfg: DistillConfig, method: str) -> DistillConfig:
    return DistillConfig.model_validate({**cfg.model_dump(), "method": method})  # validated: batch vs samples


def in_student_format(examples: list[DistillExample], tokenizer) -> list[DistillExample]:
    """The examples as the student's own chat template shows tool conversations at inference (r2w/tool_calls.py).

    A student without native tool support gets native examples rewritten exactly into the text fallback (a teacher
    whose template renders tools can teach it). A student whose template renders tools cannot learn from
    text-fallback tool prompts (e.g. a teacher behind an OpenAI-compatible server with `models.teacher_tools: text`):
    the text cannot be turned back into the structure its template renders, so that stops the run.
    """
    if tool_format(tokenizer) == TEXT_FALLBACK:
        return [in_text_fallback(e) for e in examples]
    if text := [e.example_id for e in examples if not e.tools and e.prompt and is_chat_system(e.prompt[0].content)]:
        raise ValueError(
            f"distill: {len(text)} tool-calling examples (e.g. {text[0]}) were played with r2w's text tool fallback, "
            f"but {getattr(tokenizer, 'name_or_path', 'the student')}'s chat template renders tools itself: the "
            "student would learn on prompts it never sees; play the teacher on models.backend transformers or vllm, "
            "or, for a teacher behind models.teacher_url, set models.teacher_tools: native"
        )
    return examples


def n_tokens(tokenizer, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> int:
    """Tokens of `messages` under the chat template (transformers 5 returns a BatchEncoding unless told not to)."""
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False, tools=tools or None
    )
    return len(ids)


def row_tools(dataset) -> list[list[dict] | None]:
    """Each row's tools as TRL passes them to the template (the JSON `tools` column; None where there is none)."""
    if dataset is None:
        return []
    if "tools" not in dataset.column_names:
        return [None] * len(dataset)
    return [json.loads(t) if t else None for t in dataset["tools"]]


def require_a_trainable_row(tokenizer, rows: list[list[dict]], max_length: int, tools: list | None = None) -> None:
    """TRL cuts conversations at `max_length` and drops those left with no assistant token (no loss); if that
    leaves nothing, say why before TRL fails on an empty dataset. A row is lost when the text before its first
    assistant turn (system prompt with the tools, user turns) already fills `max_length`."""
    starts = []
    for row, row_tool in zip(rows, tools or [None] * len(rows), strict=True):
        first = next((i for i, m in enumerate(row) if m["role"] == "assistant"), len(row))
        starts.append(n_tokens(tokenizer, row[:first], add_generation_prompt=True, tools=row_tool))
    kept = sum(n < max_length for n in starts)
    if starts and kept == 0:
        raise ValueError(
            f"distill.max_length={max_length}: every one of the {len(rows)} training conversations has its first "
            f"assistant turn after that many tokens (the shortest prompt before it is {min(starts)} tokens, mostly "
            "the tools block), so none would carry any loss; raise distill.max_length (up to the model's context)"
        )
    if kept < len(starts):
        log.warning("%d of %d conversations start their first assistant turn after distill.max_length=%d tokens: "
                    "they carry no loss and TRL drops them", len(starts) - kept, len(starts), max_length)  # fmt: skip


def _sft_trainer(cfg: DistillConfig, settings: dict, model, tokenizer, train, validation):
    """SFT on the teacher's turns only. One-decision rows: TRL masks the prompt of prompt/completion rows. Whole
    tool-calling conversations: `messages` rows with `assistant_only_loss`, which masks everything but the assistant
    turns through the chat template's `{% generation %}` markers (r2w/training.py proves that template renders the
    rows as the model's own does)."""
    from trl import SFTConfig, SFTTrainer

    whole = any(e.loss_on == "assistant_turns" for e in train + validation)
    train_set = to_sft_dataset(train, whole)
    eval_set = to_sft_dataset(validation, whole) if validation else None
    if whole:
        rows = list(train_set["messages"]) + (list(eval_set["messages"]) if eval_set is not None else [])
        tools = row_tools(train_set) + row_tools(eval_set)
        tokenizer = assistant_masking_tokenizer(tokenizer, rows, tools)
        if over := sum(n_tokens(tokenizer, r, tools=t) > cfg.max_length for r, t in zip(rows, tools, strict=True)):
            log.warning("%d of %d conversations exceed distill.max_length=%d: their last turns are cut", over,
                        len(rows), cfg.max_length)  # fmt: skip
        require_a_trainable_row(tokenizer, list(train_set["messages"]), cfg.max_length, row_tools(train_set))
    return SFTTrainer(
        model=model,
        args=SFTConfig(**settings, max_length=cfg.max_length, assistant_only_loss=whole),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_lora_config(cfg),
    )


def _dpo_trainer(cfg: DistillConfig, settings: dict, model, tokenizer, train, validation):
    """DPO on (state, teacher action, base action). No ref_model: with a PEFT model TRL disables the adapter for
    the reference, so the reference is exactly the weights the student starts from (base, or champion)."""
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer(
        model=model,
        ref_model=None,
        args=DPOConfig(**settings, beta=cfg.dpo.beta, max_length=cfg.max_length),
        train_dataset=to_dpo_dataset(train),
        eval_dataset=to_dpo_dataset(validation) if validation else None,
        processing_class=tokenizer,
        peft_config=peft_lora_config(cfg),
    )


def _onpolicy_trainer(cfg: DistillConfig, settings: dict, model, tokenizer, train, validation):
    """On-policy context distillation: the student samples on the hint-free prompt; the same frozen weights (adapter
    disabled) WITH the hints block score those samples; the loss is the per-token reverse KL(student || teacher)
    over the vocabulary, backpropagated into the LoRA.

    TRL 1.16 offers this as `trl.experimental.sdft.SDFTTrainer` (self-distillation with a privileged context,
    `teacher_model_kind="base"` = adapter disabled, `distillation_mode="full_logits"`, `distillation_alpha=1.0` =
    reverse KL); it runs on CPU here. Its one mismatch: it appends the privileged context to the last USER turn,
    while our teacher had the hints block at the end of the SYSTEM message; a small subclass swaps the prompt
    builder so the teacher scores with exactly the prompt it was rolled out with. GKD (trl.experimental.gkd) was
    not used: it feeds teacher and student the same prompt, which is no context distillation. No validation loss:
    SDFT's evaluation would sample too.
    """
    from trl.experimental.sdft import SDFTConfig

    args = SDFTConfig(
        **settings,
        num_generations=cfg.onpolicy.samples,
        max_completion_length=cfg.onpolicy.max_new_tokens,
        temperature=cfg.onpolicy.temperature,
        distillation_mode="full_logits",
        distillation_alpha=1.0,
        teacher_model_kind="base",
        max_prompt_length=None,  # left truncation would cut the system prompt (and the teacher's hints)
    )
    return _hinted_sdft_trainer()(
        model=model,
        args=args,
        train_dataset=to_onpolicy_dataset(train),
        processing_class=tokenizer,
        peft_config=peft_lora_config(cfg),
    )


def _hinted_sdft_trainer():
    """SDFTTrainer whose teacher prompt is our teacher's: the hints block at the end of the system message."""
    from trl.experimental.sdft import SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

    class SystemHintsContext(DemonstrationTeacherContextBuilder):
        def _compose_teacher_prompt(self, prompt, privileged_context):
            return teacher_prompt(prompt, privileged_context)

    class HintedSelfDistillation(SDFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher_context_builder = SystemHintsContext(self)

    return HintedSelfDistillation
