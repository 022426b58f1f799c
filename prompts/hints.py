"""Hint extraction with DSPy: from a failed episode to 1-4 general `WHEN <condition>: <do this>` rules.

Two signatures, one program (`HintExtractor`): `ContrastHints` shows a failure next to a verified
success of the same (or a similar) task, aligned at their first divergence, and asks what the
success did that the failure did not (ExpeL's success/failure comparison: a weak model finds a
difference far more easily than it diagnoses a failure on its own); `ExtractHints` sees the failure
alone (with the correct actions when the environment knows them), for failures no success matches.

Small models often ignore DSPy's output format, so everything the LM writes is parsed strictly:
a line that is not a rule, too long, or not an instruction is rejected and counted, never stored.
Import this module only after `r2w.runtime.configure_environment` (dspy reads its cache dir at import).
"""

from __future__ import annotations

import re
from collections import Counter

import dspy
from dspy.utils.exceptions import AdapterParseError

from r2w.contracts import Episode, Hint, Provenance, SuccessReference

PROMPT_VERSION = "hints-v2"  # v2: contrastive signature beside the single-failure one
MAX_HINTS = 4
TRAJECTORY_STEPS = 10
CONTEXT_STEPS = 2  # shared steps shown before the first divergence
REPLY_CHARS = 240  # an observation longer than this is cut in a contrast (weak models, short contexts)

_RULE = re.compile(r"^WHEN\s+(?P<condition>[^:]+?)\s*:\s*(?P<text>.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")
# Words that start a description or a question, not an instruction.
_NOT_IMPERATIVE = set(
    "i you we he she it they this that these those there here the a an my your our his her its their "
    "is are was were be been am has have had will would should could can may might must "
    "if when while because since so but and or as of to in on at by for with from".split()
)


class ExtractHints(dspy.Signature):
    """An agent failed a text-game task. Write 1-4 short, general lessons that would have helped it succeed.

    Each lesson is one line: `WHEN <condition>: <imperative instruction>`. Use placeholders such as
    {object} and {container} instead of the names of specific objects, rooms or containers."""

    task: str = dspy.InputField(desc="the task the agent was given")
    category: str = dspy.InputField(desc="the kind of game; lessons must apply to every game of this kind")
    failed_trajectory: str = dspy.InputField(desc="the agent's last steps: > action, then what the game replied")
    feedback: str = dspy.InputField(desc="how the episode ended, and the correct actions when known")
    hints: str = dspy.OutputField(desc="1-4 lines, each exactly `WHEN <condition>: <imperative instruction>`")


class ContrastHints(dspy.Signature):
    """An agent failed a task. Next to its steps is a verified success of the same task (or of a similar one),
    aligned at the first step where they differ. Write 1-4 short, general lessons: what did the success do
    that the failure did not?

    Each lesson is one line: `WHEN <condition>: <imperative instruction>`. Use placeholders such as
    {object} and {container} instead of the names of specific objects, rooms or containers."""

    task: str = dspy.InputField(desc="the task the agent was given")
    category: str = dspy.InputField(desc="the kind of game; lessons must apply to every game of this kind")
    failed_trajectory: str = dspy.InputField(desc="the failure's steps around and after the divergence")
    successful_trajectory: str = dspy.InputField(desc="the success's steps around and after the divergence")
    divergence: str = dspy.InputField(desc="where the two first differ, and what each did there")
    feedback: str = dspy.InputField(desc="how the failed episode ended")
    hints: str = dspy.OutputField(desc="1-4 lines, each exactly `WHEN <condition>: <imperative instruction>`")


class HintExtractor(dspy.Module):
    """Both extractors in one program, so one compiled file (`r2w hints optimize`) carries demos for each."""

    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(ExtractHints)
        self.contrast = dspy.Predict(ContrastHints)

    def forward(
        self,
        task: str,
        category: str,
        failed_trajectory: str,
        feedback: str,
        successful_trajectory: str = "",
        divergence: str = "",
    ) -> dspy.Prediction:
        if successful_trajectory:
            return self.contrast(
                task=task,
                category=category,
                failed_trajectory=failed_trajectory,
                successful_trajectory=successful_trajectory,
                divergence=divergence,
                feedback=feedback,
            )
        return self.extract(task=task, category=category, failed_trajectory=failed_trajectory, feedback=feedback)


def render_trajectory(episode: Episode, last: int = TRAJECTORY_STEPS) -> str:
    """The last steps as `> action` then the game's reply, after the starting observation if it fits."""
    steps = episode.steps
    if not steps:
        return "(no steps)"
    start = max(0, len(steps) - last)
    lines = [f"({start} earlier steps omitted)" if start else steps[0].observation.strip()]
    for i in range(start, len(steps)):
        after = steps[i + 1].observation if i + 1 < len(steps) else episode.outcome or "(episode ended)"
        lines.append(f"> {steps[i].action}\n{after.strip()}")
    return "\n".join(lines)


def render_feedback(episode: Episode, gold_actions: list[str] | None = None) -> str:
    """Outcome of the episode, plus the game's gold action sequence when the environment gives one."""
    text = f"The episode failed after {len(episode.steps)} steps (score {episode.score:g})."
    if episode.outcome:
        text += f" Outcome: {episode.outcome.strip()}"
    if gold_actions:
        text += "\nA correct action sequence: " + ", ".join(gold_actions)
    return text


def _cut(text: str, limit: int = REPLY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def episode_replies(episode: Episode) -> list[str]:
    """What the environment answered to each step: the next observation (text games) or the step's tool
    results (chat); the last step's answer is the episode's outcome."""
    out = []
    for i, step in enumerate(episode.steps):
        if step.tool_results:
            out.append(" ".join(m.content for m in step.tool_results))
        elif i + 1 < len(episode.steps):
            out.append(episode.steps[i + 1].observation)
        else:
            out.append(episode.outcome or "(episode ended)")
    return out


def first_divergence(a: list[str], b: list[str]) -> int:
    """Index of the first step where two action sequences differ (the shorter length if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x.strip().lower() != y.strip().lower():
            return i
    return min(len(a), len(b))


def _window(actions: list[str], replies: list[str], start: int, stop: int, mark: int, first: str) -> str:
    lines = [f"(steps 1-{start} omitted)" if start else _cut(first) or "(start)"]
    for i in range(start, min(stop, len(actions))):
        arrow = "   <-- first difference" if i == mark else ""
        reply = _cut(replies[i]) if i < len(replies) and replies[i] else "(reply not recorded)"
        lines.append(f"{i + 1}. > {_cut(actions[i], 160)}{arrow}\n   {reply}")
    if stop < len(actions):
        lines.append(f"({len(actions) - stop} later steps omitted)")
    if not actions:
        lines.append("(no steps)")
    return "\n".join(lines)


def render_contrast(failure: Episode, success: SuccessReference, last: int = TRAJECTORY_STEPS) -> tuple[str, str, str]:
    """(failed steps, successful steps, divergence): both trajectories from a little before their first
    difference, the failure for at most `last` steps, the success to its end (or `last` steps)."""
    fail_actions = [s.action for s in failure.steps]
    d = first_divergence(fail_actions, success.actions)
    start = max(0, d - CONTEXT_STEPS)
    first = failure.steps[0].observation if failure.steps else ""
    failed = _window(fail_actions, episode_replies(failure), start, start + last, d, first)
    succeeded = _window(success.actions, success.replies, start, start + last, d, success.start)
    same = "the same task" if success.same_task else "a similar task (another game of this kind)"
    shared = ", ".join(_cut(a, 60) for a in success.actions[:d])
    text = f"The success is of {same}. " + (f"Both first did: {shared}. " if d else "They differ from the start. ")
    f_next = f'"{_cut(fail_actions[d], 120)}"' if d < len(fail_actions) else ""
    s_next = f'"{_cut(success.actions[d], 120)}"' if d < len(success.actions) else ""
    if f_next and s_next:
        text += f"At step {d + 1} the failure did {f_next}; the success did {s_next}."
    elif s_next:
        text += f"The failure stopped after step {d}; the success went on with {s_next}."
    elif f_next:
        text += f"The success was done after step {d}; the failure went on with {f_next}."
    else:
        text += "Both took the same actions."
    return failed, succeeded, text


def parse_hints(raw: str, category: str, max_chars: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Strictly parse extractor output into (applicability, text) pairs, plus one reason per rejected line.

    `category` is accepted for category-specific rules; none exist yet.
    """
    accepted: list[tuple[str, str]] = []
    rejected: list[str] = []
    seen: set[str] = set()
    lines = [_BULLET.sub("", line).strip().strip("`").strip() for line in (raw or "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return [], ["empty"]
    for line in lines:
        match = _RULE.match(line)
        if match is None:
            rejected.append("no WHEN clause")
            continue
        condition = _normalize(match["condition"])
        text = _normalize(match["text"])
        if not condition or not text:
            rejected.append("empty")
            continue
        applicability = f"WHEN {condition}"
        if len(applicability) + 2 + len(text) > max_chars:
            rejected.append("too long")
            continue
        first = re.sub(r"[^a-z']", "", text.split()[0].lower())
        if not first or first in _NOT_IMPERATIVE:
            rejected.append("not imperative")
            continue
        if text.lower() in seen:
            rejected.append("duplicate")
            continue
        if len(accepted) >= MAX_HINTS:
            rejected.append("more than 4")
            continue
        seen.add(text.lower())
        accepted.append((applicability, text))
    return accepted, rejected


def extractor_inputs(
    episode: Episode, gold_actions: list[str] | None = None, reference: SuccessReference | None = None
) -> dict[str, str]:
    """The extractor's inputs for one failure: contrastive when a success is given, else the failure alone."""
    inputs = {"task": episode.task, "category": episode.category}
    if reference is None:
        return inputs | {
            "failed_trajectory": render_trajectory(episode),
            "feedback": render_feedback(episode, gold_actions),
        }
    failed, succeeded, divergence = render_contrast(episode, reference)
    return inputs | {
        "failed_trajectory": failed,
        "successful_trajectory": succeeded,
        "divergence": divergence,
        "feedback": render_feedback(episode),
    }


def extract_hints(
    episodes: list[Episode],
    lm: dspy.BaseLM,
    max_chars: int,
    extractor_id: str,
    run_id: str,
    gold_actions: dict[str, list[str]] | None = None,
    module: dspy.Module | None = None,
    references: dict[str, SuccessReference] | None = None,
) -> tuple[list[Hint], dict[str, int]]:
    """Run the extractor on each failed episode; return valid Hints and rejection counts by reason.

    A failure with an entry in `references` (episode id -> a verified success) is extracted
    contrastively (its hints' extractor id ends in `+contrast`); the others from the failure alone,
    with the correct actions from `gold_actions` when known. An LM answer DSPy cannot parse at all
    counts once as "unparseable" for that episode; other rejections are counted per line. LM
    transport/server errors propagate (the stage should retry). `module` is a compiled extractor
    (prompts/optimize.py); default the plain program.
    """
    module = module or HintExtractor()
    hints: list[Hint] = []
    rejected: Counter[str] = Counter()
    for episode in (e for e in episodes if not e.success):
        reference = (references or {}).get(episode.episode_id)
        try:
            with dspy.context(lm=lm):
                pred = module(**extractor_inputs(episode, (gold_actions or {}).get(episode.episode_id), reference))
            raw = pred.hints
        except AdapterParseError:  # a weak LM ignoring the format is data; a dead server still raises
            rejected["unparseable"] += 1
            continue
        pairs, reasons = parse_hints(str(raw), episode.category, max_chars)
        rejected.update(reasons)
        for applicability, text in pairs:
            hints.append(
                Hint(
                    hint_id=Hint.make_id(text, episode.category),
                    text=text,
                    applicability=applicability,
                    category=episode.category,
                    source="extracted",
                    extractor=f"{extractor_id}+contrast" if reference else extractor_id,
                    provenance=Provenance(episode_ids=[episode.episode_id], run_ids=[run_id]),
                )
            )
    return hints, dict(rejected)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
