"""Hint extraction with DSPy: from a failed episode to 1-4 general `WHEN <condition>: <do this>` rules.

Small models often ignore DSPy's output format, so everything the LM writes is parsed strictly:
a line that is not a rule, too long, or not an instruction is rejected and counted, never stored.
Import this module only after `r2w.runtime.configure_environment` (dspy reads its cache dir at import).
"""

from __future__ import annotations

import re
from collections import Counter

import dspy
from dspy.utils.exceptions import AdapterParseError

from r2w.contracts import Episode, Hint, Provenance

PROMPT_VERSION = "hints-v1"
MAX_HINTS = 4
TRAJECTORY_STEPS = 10

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


class HintExtractor(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(ExtractHints)

    def forward(self, task: str, category: str, failed_trajectory: str, feedback: str) -> dspy.Prediction:
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


def extract_hints(
    episodes: list[Episode],
    lm: dspy.BaseLM,
    max_chars: int,
    extractor_id: str,
    run_id: str,
    gold_actions: dict[str, list[str]] | None = None,
    module: dspy.Module | None = None,
) -> tuple[list[Hint], dict[str, int]]:
    """Run the extractor on each failed episode; return valid Hints and rejection counts by reason.

    An LM answer DSPy cannot parse at all counts once as "unparseable" for that episode; other
    rejections are counted per line. LM transport/server errors propagate (the stage should retry).
    `module` is a compiled extractor (prompts/optimize.py); default the plain signature.
    """
    module = module or HintExtractor()
    hints: list[Hint] = []
    rejected: Counter[str] = Counter()
    for episode in (e for e in episodes if not e.success):
        try:
            with dspy.context(lm=lm):
                pred = module(
                    task=episode.task,
                    category=episode.category,
                    failed_trajectory=render_trajectory(episode),
                    feedback=render_feedback(episode, (gold_actions or {}).get(episode.episode_id)),
                )
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
                    extractor=extractor_id,
                    provenance=Provenance(episode_ids=[episode.episode_id], run_ids=[run_id]),
                )
            )
    return hints, dict(rejected)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
