"""Distillation data: hint-free prompts and their proofs, leak checks, task-level splits, TRL row formats.

Shared by the distill stage's three methods (tasks/distill.py); plain functions, no training imports.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict

from rapidfuzz import fuzz

from r2w.agent_prompt import HINTS_CLOSE, HINTS_OPEN, as_text_fallback, is_base_system, strip_hints_block
from r2w.config import DistillConfig
from r2w.contracts import DistillExample, Episode, Hint, Message, Step, Trajectory, content_hash
from r2w.tool_calls import TEXT_FALLBACK, parse_tool_calls, render_turn, template_messages

log = logging.getLogger(__name__)

# Completions are game actions: any of these means the teacher talked about its hints instead of acting.
HINT_REFERENCE = re.compile(
    r"\bhints?\b|as suggested|as advised|as instructed|according to the|past attempts|as the tip",
    re.IGNORECASE,
)
# partial_ratio of a very short hint against a long prompt matches by chance; short hints get the exact check only.
FUZZY_MIN_CHARS = 20


class PromptMismatchError(ValueError):
    """A de-hinted teacher prompt is not the base agent's prompt: training on it would teach the wrong input."""


def student_prompt(teacher_prompt: list[Message], hints_block: str) -> tuple[list[Message], int]:
    """Remove the hints block and prove what is left is the base agent's prompt (returns prompt, 1 if removed)."""
    prompt = strip_hints_block(teacher_prompt)
    if any(HINTS_OPEN in m.content or HINTS_CLOSE in m.content for m in prompt):
        raise PromptMismatchError("a hints marker survived strip_hints_block (block outside the system message?)")
    system = [m for m in prompt if m.role == "system"]
    base_system = system[0].content if len(system) == 1 else None
    if not is_base_system(base_system):  # the action, free-text answer (reasoning_gym) or tool-calling chat prompt
        raise PromptMismatchError("de-hinted system message differs from the base agent's system prompt")
    teacher_system = next(m.content for m in teacher_prompt if m.role == "system")
    if teacher_system != base_system + hints_block:
        raise PromptMismatchError("teacher system message is not the base system prompt plus its recorded hints block")
    return prompt, int(teacher_system != base_system)


def teacher_prompt(prompt: list[dict], hints_block: str) -> list[dict]:
    """Inverse of student_prompt: the hints block back at the end of the system message, where the teacher had it."""
    if not prompt or prompt[0].get("role") != "system":
        raise PromptMismatchError("on-policy prompt does not start with the system message the hints block belongs to")
    return [{**prompt[0], "content": prompt[0]["content"] + hints_block}, *prompt[1:]]


def example_hash(prompt: list[Message], completion: str, rejected: str | None = None, tools: list | None = None) -> str:
    payload = {"prompt": [m.model_dump() for m in prompt], "completion": completion}
    if rejected is not None:
        payload["rejected"] = rejected
    if tools:  # native tool conversations only: older examples hash as before
        payload["tools"] = tools
    return content_hash(payload)[:16]


def split_tasks(task_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A deterministic validation subset of whole tasks, so no task's states appear on both sides."""
    if fraction <= 0 or len(task_ids) < 2:
        return set()
    n = min(len(task_ids) - 1, max(1, round(fraction * len(task_ids))))
    ranked = sorted(task_ids, key=lambda t: content_hash({"seed": seed, "task_id": t}))
    return set(ranked[:n])


def prompt_hash(prompt: list[Message]) -> str:
    return content_hash([m.model_dump() for m in prompt])


def require_base_prompt(episode: Episode, index: int, prompt: list[Message]) -> None:
    if any(HINTS_OPEN in m.content for m in prompt):
        raise PromptMismatchError(
            f"episode {episode.episode_id} step {index}: has a hints block, so it is not a base-agent episode"
        )


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def normalised_hint_texts(hints: list[Hint]) -> list[str]:
    return [t for t in (_normalise(h.text) for h in hints) if t]


def turn_texts(text: str) -> list[str]:
    """An assistant turn's text, then every string inside its tool calls' decoded arguments.

    Matching the rendered turn alone would miss a hint with quotes or backslashes in it: JSON escapes them.
    """
    out = [text]
    for call in parse_tool_calls(text).calls:
        out.extend(_strings(json.loads(call.function.arguments)))
    return out


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def text_leaks(texts: list[str], hint_texts: list[str], fuzzy_ratio: float) -> bool:
    """Whether a hint's text is in one of `texts`: verbatim (normalised), or nearly so for long enough hints.

    The fuzzy match only looks for the hint inside a text at least as long as the hint: `partial_ratio` of a
    short text (an action, a tool result "6") against a long hint would match by chance.
    """
    for text in texts:
        content = _normalise(text)
        for hint in hint_texts:
            if hint in content:
                return True
            long_enough = len(hint) >= FUZZY_MIN_CHARS and len(content) >= len(hint)
            if long_enough and fuzz.partial_ratio(hint, content) >= fuzzy_ratio:
                return True
    return False


def prompt_leaks(prompt: list[Message], hint_texts: list[str], fuzzy_ratio: float) -> bool:
    """Hint text anywhere in the input, earlier assistant turns' tool-call arguments included (as text in the
    fallback's turns, as structured calls in a native prompt's)."""
    texts = [t for m in prompt for t in (turn_texts(render_turn(m)) if m.role == "assistant" else [m.content])]
    return text_leaks(texts, hint_texts, fuzzy_ratio)


def completion_leaks(completion: str, hint_texts: list[str], fuzzy_ratio: float) -> bool:
    """A target that refers to its hints, or carries a hint's text (in its words or in a tool call's arguments)."""
    return bool(HINT_REFERENCE.search(completion)) or text_leaks(turn_texts(completion), hint_texts, fuzzy_ratio)


def count_leaks(examples: list[DistillExample], hints: list[Hint], fuzzy_ratio: float) -> int:
    """Independent re-check of the final training set: rows whose input carries hint text or whose
    target refers to hints or carries their text. The leakage gate reads this number, not the filter's drop counts."""
    hint_texts = normalised_hint_texts(hints)
    return sum(
        prompt_leaks(e.prompt, hint_texts, fuzzy_ratio)
        or completion_leaks(e.completion, hint_texts, fuzzy_ratio)
        or bool(e.rejected and completion_leaks(e.rejected, hint_texts, fuzzy_ratio))
        for e in examples
    )


def conversation(traj: Trajectory) -> tuple[list[Message], str]:
    """A successful tool-calling episode as ONE hint-free conversation: (its last prompt, its last turn).

    Every step's prompt is the conversation so far, so the last prompt plus the last turn holds every
    assistant turn exactly as the model later saw it; this proves that, step by step, before it is trained on.
    """
    steps = traj.episode.steps
    native = traj.episode.tool_format != TEXT_FALLBACK
    prompts = [student_prompt(step.prompt, traj.hints_block)[0] for step in steps]
    full = [*prompts[-1], assistant_turn(steps[-1], native)]
    for prompt, step in zip(prompts, steps, strict=True):
        if full[: len(prompt)] != prompt or full[len(prompt)] != assistant_turn(step, native):
            raise PromptMismatchError(
                f"episode {traj.episode.episode_id} step {step.index}: its prompt and turn are not the start of the "
                "episode's last prompt, so the conversation cannot be trained as one"
            )
    return prompts[-1], steps[-1].action


def assistant_turn(step: Step, native: bool) -> Message:
    """A chat step's turn as later prompts hold it: its text (the fallback), or its text and structured calls."""
    if not native:
        return Message(role="assistant", content=step.action)
    return Message(role="assistant", content=parse_tool_calls(step.action).content, tool_calls=step.tool_calls)


def final_turn(example: DistillExample, text: str | None = None) -> dict:
    """The completion (or `text`, e.g. DPO's rejected turn) as the conversation's next assistant message: text
    (fallback), or text and calls (native)."""
    text = example.completion if text is None else text
    if not example.tools:
        return {"role": "assistant", "content": text}
    turn = sum(m.role == "assistant" for m in example.prompt)  # ids as the rollout gave them: call_<turn>_<i>
    parsed = parse_tool_calls(text, turn)
    return template_messages([Message(role="assistant", content=parsed.content, tool_calls=parsed.calls)])[0]


def in_text_fallback(example: DistillExample) -> DistillExample:
    """A native tool conversation as a model without tool support sees the same conversation (r2w/tool_calls.py):
    a teacher whose template renders tools can teach a student whose template does not."""
    if not example.tools:
        return example
    prompt = as_text_fallback(example.prompt, example.tools)
    return example.model_copy(update={"prompt": prompt, "tools": []})


def finalise(
    candidates: list[tuple[tuple, DistillExample]], cfg: DistillConfig, seed: int, counts: dict[str, int]
) -> list[DistillExample]:
    """Cap per task (best-ranked first), split whole tasks into train/validation, count both."""
    by_task: dict[str, list[tuple[tuple, DistillExample]]] = defaultdict(list)
    for key, example in candidates:
        by_task[example.task_id].append((key, example))
    kept = []
    for task_id in sorted(by_task):
        ranked = [e for _, e in sorted(by_task[task_id], key=lambda item: item[0])]
        kept.extend(ranked[: cfg.max_examples_per_task])
        counts["capped"] += max(0, len(ranked) - cfg.max_examples_per_task)
    validation_tasks = split_tasks(sorted({e.task_id for e in kept}), cfg.validation_fraction, seed)
    examples = [
        e.model_copy(update={"split": "validation" if e.task_id in validation_tasks else "train"}) for e in kept
    ]
    counts["validation"] = sum(e.split == "validation" for e in examples)
    counts["train"] = len(examples) - counts["validation"]
    log.info("distill set: %s", counts)
    return examples


def to_sft_dataset(examples: list[DistillExample], messages: bool | None = None):
    """TRL conversational rows. One-decision examples only: prompt/completion rows, TRL masks the prompt.

    With any whole conversation among them (or `messages=True`): `messages` rows for all, trained with
    `assistant_only_loss`, so the loss falls on every assistant turn (tool calls included) and on nothing else.
    A one-decision row is then its prompt plus the completion, the same loss, if its prompt has no assistant turn.
    Text-fallback conversations carry their tools inside the system message, as the agent saw them. Native ones
    (played with the model's own tool template) add TRL's `tools` column (JSON text, which TRL decodes) and keep
    structured calls; their messages are stored as JSON values (`datasets.Json`), because Arrow would otherwise
    merge the calls' argument objects into one struct and fill other calls' missing keys with nulls.
    """
    from datasets import Dataset, Features, Json, List, Value

    if messages is None:
        messages = any(e.loss_on == "assistant_turns" for e in examples)
    if not messages:
        if any(e.tools for e in examples):
            raise ValueError("native tool examples are whole conversations: train them as messages rows")
        return Dataset.from_list(
            [
                {
                    "prompt": [m.model_dump() for m in e.prompt],
                    "completion": [{"role": "assistant", "content": e.completion}],
                }
                for e in examples
            ]
        )
    for e in examples:
        if e.loss_on == "completion" and any(m.role == "assistant" for m in e.prompt):
            raise ValueError(
                f"distill example {e.example_id}: a one-decision row whose prompt has assistant turns cannot be "
                "trained next to whole conversations (its earlier turns would get loss too)"
            )
    if not any(e.tools for e in examples):
        return Dataset.from_list([{"messages": conversation_messages(e)} for e in examples])
    rows = [{"messages": conversation_messages(e), "tools": json.dumps(e.tools or None)} for e in examples]
    return Dataset.from_list(rows, features=Features({"messages": List(Json()), "tools": Value("string")}))


def conversation_messages(example: DistillExample) -> list[dict]:
    """The example as one chat: its prompt, then the completion as the last assistant turn."""
    if not example.tools:
        return [m.model_dump() for m in example.prompt] + [final_turn(example)]
    return template_messages(example.prompt) + [final_turn(example)]


def native_tools_not_for(examples: list[DistillExample], method: str) -> None:
    """On-policy rows are rendered without a `tools` argument: refuse native tool examples there."""
    if native := [e.example_id for e in examples if e.tools]:
        raise ValueError(
            f"distill.method={method}: {len(native)} examples (e.g. {native[0]}) come from episodes played with "
            "the model's own tool template, which method=sft and method=dpo train"
        )


def to_dpo_dataset(pairs: list[DistillExample]):
    """Conversational prompt/chosen/rejected rows. Pairs from native tool conversations (the model's own tool
    template) keep structured calls in all three and add TRL's `tools` column, which DPOTrainer passes to the
    template; their messages are JSON values, for the reason given in `to_sft_dataset`."""
    from datasets import Dataset, Features, Json, List, Value

    if not any(p.tools for p in pairs):
        return Dataset.from_list(
            [
                {
                    "prompt": [m.model_dump() for m in p.prompt],
                    "chosen": [{"role": "assistant", "content": p.completion}],
                    "rejected": [{"role": "assistant", "content": p.rejected}],
                }
                for p in pairs
            ]
        )
    rows = [
        {
            "prompt": template_messages(p.prompt),
            "chosen": [final_turn(p)],
            "rejected": [final_turn(p, p.rejected)],
            "tools": json.dumps(p.tools or None),
        }
        for p in pairs
    ]
    columns = {"prompt": List(Json()), "chosen": List(Json()), "rejected": List(Json()), "tools": Value("string")}
    return Dataset.from_list(rows, features=Features(columns))


def to_onpolicy_dataset(examples: list[DistillExample]):
    """One row per distinct (hint-free state, hints block); states without hints carry no teacher signal."""
    from datasets import Dataset

    native_tools_not_for(examples, "onpolicy")
    rows = {}
    for e in examples:
        if e.teacher_context:
            prompt = [m.model_dump() for m in e.prompt]
            rows.setdefault(content_hash([prompt, e.teacher_context]), {"prompt": prompt, "hints": e.teacher_context})
    if not rows:
        raise ValueError("no on-policy training state has a hints block: the teacher would equal the student")
    return Dataset.from_list([{"prompt": r["prompt"], "privileged_context": r["hints"]} for r in rows.values()])
