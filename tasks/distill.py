"""Distill stage: turn hinted teacher successes into hint-free training data, then train a LoRA student.

The student must behave as if it had the hints without seeing them, so every example's prompt is the
teacher's prompt with the delimited hints block removed (verified to be exactly the base agent's
prompt), and anything that would still leak a hint into the training data is counted and dropped.

Three methods (`distill.method`), one LoRA machinery (r2w/training.py: checkpoints, resume, round trip):
- sft: the teacher's actions as targets (TRL SFTTrainer, loss on the action only);
- dpo: teacher action (chosen) vs the base agent's action in the same state (rejected), TRL DPOTrainer; the
  reference is the student's own base with the adapter disabled;
- onpolicy: context distillation; the student samples hint-free, the same model WITH the hints block scores
  the samples (TRL's experimental SDFTTrainer, reverse KL over the vocabulary).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

from pydantic import BaseModel

from r2w.config import DistillConfig, R2WConfig
from r2w.contracts import DistillExample, Episode, Hint, Message, Trajectory
from r2w.distill_data import (
    HINT_REFERENCE,
    PromptMismatchError,
    count_leaks,
    example_hash,
    finalise,
    normalised_hint_texts,
    prompt_hash,
    prompt_leaks,
    require_base_prompt,
    student_prompt,
    teacher_prompt,
    to_dpo_dataset,
    to_onpolicy_dataset,
    to_sft_dataset,
)
from r2w.training import (
    RoundTripError,
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

# raised by this stage, re-exported so callers need only this module
__all__ = ["PromptMismatchError", "RoundTripError"]

log = logging.getLogger(__name__)

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
PAIR_COUNT_KEYS = (
    "base_failures",
    "episode_pairs",  # (teacher success, base failure) of the same task
    "no_shared_state",  # their first hint-free prompts already differ
    "no_divergence",  # same actions in every shared state
    "diverged",
    "rejected_also_chosen",  # the base's action is one a successful teacher took in that state: not a loser
    "leak_prompt",
    "leak_completion",
    "duplicates",
    "capped",
    "train",
    "validation",
)
SERIES = {  # per-step metrics each method's trainer logs, kept in the artifacts next to the loss
    "sft": ("mean_token_accuracy",),
    "dpo": ("rewards/margins", "rewards/accuracies"),
    "onpolicy": ("self_distillation/distillation_loss", "completions/mean_length"),
}


# ---------------------------------------------------------------------------------------------- examples


def build_training_set(
    trajectories: list[Trajectory],
    active_hints: list[Hint],
    cfg: DistillConfig,
    seed: int = 0,
    base_episodes: list[Episode] | None = None,
) -> tuple[list[DistillExample], dict[str, int]]:
    """The training rows `cfg.method` needs: SFT examples, DPO pairs (needs the base episodes), or on-policy states."""
    if cfg.method == "dpo":
        if base_episodes is None:
            raise ValueError("distill.method=dpo needs the base agent's episodes (the collect stage's `episodes`)")
        rows, counts = build_dpo_pairs(trajectories, base_episodes, active_hints, cfg, seed)
    else:
        rows, counts = build_examples(
            trajectories, active_hints, cfg, seed, keep_teacher_context=cfg.method == "onpolicy"
        )
    counts["leak_remaining"] = count_leaks(rows, active_hints, cfg.leakage_fuzzy_ratio)
    return rows, counts


def build_examples(
    trajectories: list[Trajectory],
    active_hints: list[Hint],
    cfg: DistillConfig,
    seed: int = 0,
    keep_teacher_context: bool = False,
) -> tuple[list[DistillExample], dict[str, int]]:
    """One hint-free (prompt, action) example per teacher step, leak-checked, deduplicated, capped, split by task."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["not_successful"] = 0
    hint_texts = normalised_hint_texts(active_hints)
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
            if prompt_leaks(prompt, hint_texts, cfg.leakage_fuzzy_ratio):
                counts["leak_prompt"] += 1
                continue
            if HINT_REFERENCE.search(step.action):
                counts["leak_completion"] += 1
                continue
            context = traj.hints_block if keep_teacher_context else ""
            example = _unseen_example(traj, prompt, step.action, seen, counts, teacher_context=context)
            if example is None:
                continue
            # Shorter successes first: long ones carry wandering (repeated open/close) the student would copy.
            candidates.append(((len(traj.episode.steps), traj.trajectory_id, step.index), example))
    return finalise(candidates, cfg, seed, counts), counts


def build_dpo_pairs(
    trajectories: list[Trajectory],
    base_episodes: list[Episode],
    active_hints: list[Hint],
    cfg: DistillConfig,
    seed: int = 0,
) -> tuple[list[DistillExample], dict[str, int]]:
    """(state, teacher action, base action) where a successful teacher and a failed base episode of one task part.

    Both episodes are walked step by step while their hint-free prompts are identical (the prompt is all a
    policy sees, history included); at each such state where the actions differ, the teacher's action is
    `chosen` and the base's `rejected`. With history in the prompt a different action makes the next prompts
    differ, so this is the divergence point of the shared prefix. A base action that some successful teacher
    took in the same state is not a loser and is dropped.
    """
    counts = dict.fromkeys(PAIR_COUNT_KEYS, 0)
    counts["not_successful"] = counts["base_successes"] = 0
    hint_texts = normalised_hint_texts(active_hints)
    failures: dict[str, list[Episode]] = defaultdict(list)
    for episode in base_episodes:
        if episode.success:
            counts["base_successes"] += 1
            continue
        for step in episode.steps:
            require_base_prompt(episode, step.index, step.prompt)
        counts["base_failures"] += 1
        failures[episode.task_id].append(episode)
    teachers: list[tuple[Trajectory, list[list[Message]]]] = []
    winners: dict[str, set[str]] = defaultdict(set)  # prompt hash -> actions of successful teachers there
    for traj in trajectories:
        if not traj.episode.success:
            counts["not_successful"] += 1
            continue
        prompts = [student_prompt(step.prompt, traj.hints_block)[0] for step in traj.episode.steps]
        for prompt, step in zip(prompts, traj.episode.steps, strict=True):
            winners[prompt_hash(prompt)].add(step.action)
        teachers.append((traj, prompts))

    seen: set[str] = set()
    candidates: list[tuple[tuple, DistillExample]] = []
    for traj, prompts in teachers:
        for base in failures.get(traj.episode.task_id, []):
            counts["episode_pairs"] += 1
            if not (base.steps and prompts and base.steps[0].prompt == prompts[0]):
                counts["no_shared_state"] += 1
                continue
            diverged = False
            for prompt, step, base_step in zip(prompts, traj.episode.steps, base.steps, strict=False):
                if base_step.prompt != prompt:
                    break
                if base_step.action == step.action:
                    continue
                diverged = True
                if prompt_leaks(prompt, hint_texts, cfg.leakage_fuzzy_ratio):
                    counts["leak_prompt"] += 1
                elif HINT_REFERENCE.search(step.action) or HINT_REFERENCE.search(base_step.action):
                    counts["leak_completion"] += 1
                elif base_step.action in winners[prompt_hash(prompt)]:
                    counts["rejected_also_chosen"] += 1
                elif pair := _unseen_example(traj, prompt, step.action, seen, counts, rejected=base_step.action):
                    candidates.append(
                        ((len(traj.episode.steps), traj.trajectory_id, step.index, base.episode_id), pair)
                    )
            counts["diverged" if diverged else "no_divergence"] += 1
    return finalise(candidates, cfg, seed, counts), counts


def _unseen_example(
    traj: Trajectory,
    prompt: list[Message],
    completion: str,
    seen: set[str],
    counts: dict[str, int],
    rejected: str | None = None,
    teacher_context: str = "",
) -> DistillExample | None:
    """A content-addressed example, or None (counted as a duplicate) when an identical one was already taken."""
    example_id = example_hash(prompt, completion, rejected)
    if example_id in seen:
        counts["duplicates"] += 1
        return None
    seen.add(example_id)
    return DistillExample(
        example_id=example_id,
        task_id=traj.episode.task_id,
        category=traj.episode.category,
        prompt=prompt,
        completion=completion,
        rejected=rejected,
        teacher_context=teacher_context,
        trajectory_id=traj.trajectory_id,
    )


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
    method: str = "sft"
    base_model: Path | None = None  # the weights the adapter sits on (the champion's merged model in a continual round)
    parent_version: str | None = None  # registry version trained on top of (init_from=champion)
    train_metrics: dict[str, list[float]] = {}  # per-step method metrics, e.g. DPO reward margins

    @property
    def s_per_step(self) -> float:
        trained = self.steps - self.resumed_from_step
        return self.train_seconds / trained if trained > 0 else 0.0


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


def _sft_trainer(cfg: DistillConfig, settings: dict, model, tokenizer, train, validation):
    """SFT on the action only: TRL masks the prompt of conversational prompt/completion rows."""
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(
        model=model,
        args=SFTConfig(**settings, max_length=1024),
        train_dataset=to_sft_dataset(train),
        eval_dataset=to_sft_dataset(validation) if validation else None,
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
        args=DPOConfig(**settings, beta=cfg.dpo.beta, max_length=1024),
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


# ---------------------------------------------------------------------------------------------- continual rounds


class ChampionNotFoundError(LookupError):
    """distill.init_from=champion, but the registry has no `champion` to train on top of."""


class StudentBase(BaseModel):
    """The weights a new adapter is trained on: the configured base, or the champion's merged model."""

    path: Path
    parent_version: str | None = None
    source: str = ""


def resolve_student_base(cfg: R2WConfig, base_path: Path) -> StudentBase:
    """init_from=base: the base model. init_from=champion: the `champion` version's merged folder, downloaded once."""
    if cfg.distill.init_from == "base":
        return StudentBase(path=Path(base_path))
    from mlflow.exceptions import MlflowException

    from r2w.tracking import client_for
    from tasks.register import CHAMPION

    name = cfg.registry.model_name
    try:
        version = client_for(cfg).get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        raise ChampionNotFoundError(
            f"distill.init_from=champion: registered model {name!r} has no `{CHAMPION}` alias at {cfg.tracking_uri} "
            "(a person sets it with `r2w promote`; or set distill.init_from=base)"
        ) from exc
    target = cfg.data_path / "models" / "champions" / f"{name}-v{version.version}"  # versions are immutable
    if not (target / "config.json").is_file():
        write_atomically(target, partial(_download_model, version.source, cfg.tracking_uri))
    log.info("training on top of %s version %s (%s)", name, version.version, version.source)
    return StudentBase(path=target, parent_version=str(version.version), source=version.source)


def _download_model(source: str, tracking_uri: str, folder: Path) -> None:
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder), tracking_uri=tracking_uri)
    )
    if local.resolve() != folder.resolve():
        for item in local.iterdir():
            shutil.move(str(item), str(folder / item.name))
        shutil.rmtree(local)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"champion source {source}: no config.json, not a merged model folder")


# ---------------------------------------------------------------------------------------------- prefect

from prefect import task  # noqa: E402 - after the plain functions, which must not need Prefect
from prefect.cache_policies import NO_CACHE  # noqa: E402

from r2w.caching import stage_cache  # noqa: E402

build_examples_task = task(name="build-distill-set", cache_policy=NO_CACHE)(build_training_set)
# Cached on the examples' content, the start weights, the distill config and the output folder;
# a killed training run is not cached and resumes from its last checkpoint instead.
train_task = task(name="train-student", cache_policy=stage_cache(), persist_result=True)(train_student)
