"""Distill stage: turn hinted teacher successes into hint-free training data, then train a LoRA student.

The student must behave as if it had the hints without seeing them, so every example's prompt is the
teacher's prompt with the delimited hints block removed (verified to be exactly the base agent's
prompt), and anything that would still leak a hint into the training data is counted and dropped.

Three methods (`distill.method`), trained in r2w/trainers.py (no Prefect) on one LoRA machinery (r2w/training.py):
- sft: the teacher's actions as targets (TRL SFTTrainer, loss on the action only);
- dpo: teacher action (chosen) vs the base agent's action in the same state (rejected), TRL DPOTrainer; the
  reference is the student's own base with the adapter disabled;
- onpolicy: context distillation; the student samples hint-free, the same model WITH the hints block scores
  the samples (TRL's experimental SDFTTrainer, reverse KL over the vocabulary).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from evaluation.environments import release_idle
from r2w.agent_prompt import is_chat_system
from r2w.config import DistillConfig, R2WConfig
from r2w.contracts import DistillExample, Episode, Hint, Message, Step, Trajectory, content_hash
from r2w.datasets import DatasetRef, load_records, save_records
from r2w.distill_data import (
    PromptMismatchError,
    completion_leaks,
    conversation,
    count_leaks,
    example_hash,
    finalise,
    normalised_hint_texts,
    prompt_hash,
    prompt_leaks,
    require_base_prompt,
    student_prompt,
)
from r2w.registry import CHAMPION, champion_version, version_model
from r2w.runtime import fastest_threads, torch_threads
from r2w.trainers import StudentArtifacts, train_dpo, train_onpolicy, train_sft, train_student
from r2w.training import RoundTripError
from tasks.collect import CollectResult
from tasks.replay import ReplayResult
from tasks.teach import TeachResult

# the training functions live in r2w/trainers.py (no Prefect); re-exported so callers need only this module
__all__ = [
    "PromptMismatchError",
    "RoundTripError",
    "StudentArtifacts",
    "train_dpo",
    "train_onpolicy",
    "train_sft",
    "train_student",
]

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
    """Hint-free examples, leak-checked, deduplicated, capped, split by task.

    A text-game or answer step is one (prompt, action) example. A tool-calling episode is one whole
    conversation (loss on every assistant turn) for SFT; for on-policy distillation, whose rows are
    states the student samples from, each of its turns is a state like any other step.
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["not_successful"] = counts["malformed_turns"] = 0
    hint_texts = normalised_hint_texts(active_hints)
    seen: set[str] = set()
    candidates: list[tuple[tuple, DistillExample]] = []
    for traj in trajectories:
        if not traj.episode.success:
            counts["not_successful"] += 1
            continue
        rows = []
        for step in traj.episode.steps:
            counts["steps_in"] += 1
            prompt, removed = student_prompt(step.prompt, traj.hints_block)
            counts["hint_block_removed"] += removed
            rows.append((step, prompt))
        if not keep_teacher_context and is_chat_system(rows[0][1][0].content if rows else None):
            if example := _conversation_example(traj, rows, hint_texts, cfg, seen, counts):
                candidates.append(((len(rows), traj.trajectory_id, 0), example))
            continue
        for step, prompt in rows:
            if prompt_leaks(prompt, hint_texts, cfg.leakage_fuzzy_ratio):
                counts["leak_prompt"] += 1
                continue
            if completion_leaks(step.action, hint_texts, cfg.leakage_fuzzy_ratio):
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
    hint_texts, ratio = normalised_hint_texts(active_hints), cfg.leakage_fuzzy_ratio
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
                elif any(completion_leaks(a, hint_texts, ratio) for a in (step.action, base_step.action)):
                    counts["leak_completion"] += 1
                elif base_step.action in winners[prompt_hash(prompt)]:
                    counts["rejected_also_chosen"] += 1
                elif pair := _unseen_example(traj, prompt, step.action, seen, counts, rejected=base_step.action):
                    candidates.append(
                        ((len(traj.episode.steps), traj.trajectory_id, step.index, base.episode_id), pair)
                    )
            counts["diverged" if diverged else "no_divergence"] += 1
    return finalise(candidates, cfg, seed, counts), counts


def _conversation_example(
    traj: Trajectory,
    rows: list[tuple[Step, list[Message]]],
    hint_texts: list[str],
    cfg: DistillConfig,
    seen: set[str],
    counts: dict[str, int],
) -> DistillExample | None:
    """A tool-calling episode as one conversation example, or None (counted) when a turn is malformed or leaks."""
    if any(step.malformed_tool_call for step, _ in rows):
        counts["malformed_turns"] += 1  # the agent saw that turn differently from how it wrote it: not a target
        return None
    # turns first: a leaky turn is in every later prompt too, but it is a target that leaks
    if any(completion_leaks(step.action, hint_texts, cfg.leakage_fuzzy_ratio) for step, _ in rows):
        counts["leak_completion"] += 1
        return None
    if any(prompt_leaks(prompt, hint_texts, cfg.leakage_fuzzy_ratio) for _, prompt in rows):
        counts["leak_prompt"] += 1
        return None
    prompt, completion = conversation(traj)
    example = _unseen_example(traj, prompt, completion, seen, counts)
    return example.model_copy(update={"loss_on": "assistant_turns"}) if example else None


def native_tools(episode: Episode) -> list[dict]:
    """The tools an example must carry to be rendered as it was played: those of an episode played with the
    model's own tool template (r2w/tool_calls.py); none for the text fallback, whose tools are in the prompt."""
    return episode.tools if episode.tool_format else []


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
    tools = native_tools(traj.episode)
    example_id = example_hash(prompt, completion, rejected, tools)
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
        tools=tools,
    )


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
    version = champion_version(cfg)
    if version is None:
        raise ChampionNotFoundError(
            f"distill.init_from=champion: registered model {cfg.registry.model_name!r} has no `{CHAMPION}` alias at "
            f"{cfg.tracking_uri} (a person sets it with `r2w promote`; or set distill.init_from=base)"
        )
    target = version_model(cfg, version)
    log.info("training on top of %s version %s (%s)", cfg.registry.model_name, version, target)
    return StudentBase(path=target, parent_version=version, source=str(target))


# ---------------------------------------------------------------------------------------------- stage


class DistillSet(BaseModel):
    """The hint-free training set as stored, with the leakage counts the gate checks."""

    examples: DatasetRef
    leakage: dict[str, int]
    n_train: int  # teacher rows in the train split; replay rows come on top

    def metrics(self) -> dict[str, float]:
        return {f"leakage.{k}": v for k, v in self.leakage.items()}


def build_distill_set(
    cfg: R2WConfig,
    taught: TeachResult,
    collected: CollectResult,
    active_hints: list[Hint],
    replay: ReplayResult | None = None,
) -> DistillSet:
    """Strip hints from the teacher's verified successes, check leakage, add replay rows, store the set.

    DPO's rejected actions are the base agent's own, from its collected episodes of the same tasks.
    """
    trajectories = load_records(taught.trajectories, Trajectory)
    base_episodes = load_records(collected.episodes, Episode) if cfg.distill.method == "dpo" else None
    examples, leakage = build_training_set(trajectories, active_hints, cfg.distill, cfg.runtime.seed, base_episodes)
    n_train = sum(e.split == "train" for e in examples)
    if replay is not None and examples:  # against forgetting: the base's own answers on other families
        examples = examples + load_records(replay.examples, DistillExample)
        leakage = {**leakage, "replay": replay.kept, "replay_empty": replay.empty}
    ref = save_records(examples, cfg.data_path / "datasets", "distill-examples", {"leakage": leakage})
    return DistillSet(examples=ref, leakage=leakage, n_train=n_train)


def train(cfg: R2WConfig, dataset: DistillSet, start: StudentBase) -> StudentArtifacts:
    """Train the student on the stored set, on top of `start`, in a folder named by what it depends on."""
    parent = [start.parent_version] if start.parent_version else []
    key = [dataset.examples.hash, cfg.distill.model_dump(mode="json"), *parent]
    out_dir = cfg.data_path / "students" / content_hash(key)[:16]
    examples = load_records(dataset.examples, DistillExample)
    release_idle()  # idle environment JVMs would hold memory and CPU while the student trains
    threads, why = fastest_threads(cfg.runtime.train_threads)  # how fast, not what: outside the folder's key
    log.info("training on %d torch thread(s) (%s)", threads, why)
    with torch_threads(threads):
        student = train_student(examples, start.path, cfg.distill, out_dir, cfg.train_seed, True, start.parent_version)
    return student.model_copy(update={"threads": threads})


# ---------------------------------------------------------------------------------------------- prefect

from prefect import task  # noqa: E402 - after the plain functions, which must not need Prefect
from prefect.cache_policies import NO_CACHE  # noqa: E402

from r2w.caching import stage_cache  # noqa: E402

build_examples_task = task(name="build-distill-set", cache_policy=NO_CACHE)(build_distill_set)


def student_incomplete(result: StudentArtifacts, _inputs: dict) -> str | None:
    """A cached student is stale when its adapter or merged folder lost its config (deleted, half-copied)."""
    for folder, name in ((result.adapter_dir, "adapter_config.json"), (result.merged_dir, "config.json")):
        if not (Path(folder) / name).is_file():
            return f"{folder}: no {name}"
    return None


# Cached on the examples' content, the start weights, the distill config and the output folder;
# a killed training run is not cached and resumes from its last checkpoint instead.
train_task = task(
    name="train-student", cache_policy=stage_cache("distill", "runtime", check=student_incomplete), persist_result=True
)(train)
