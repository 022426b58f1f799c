"""The hint extractor as a DSPy program: how a failure becomes the extractor's inputs, and how a
compiled program is saved and loaded (`hints.extractor.program`).

Compiling it against measured uplift is a stage that plays episodes: tasks/optimize.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import dspy

from prompts.hints import HintExtractor, render_feedback, render_trajectory
from r2w.contracts import Episode, content_hash

INPUTS = ("task", "category", "failed_trajectory", "feedback")


def to_example(episode: Episode, gold_actions: list[str] | None = None) -> dspy.Example:
    """A failed episode as the extractor's inputs (the same rendering `extract_hints` uses)."""
    return dspy.Example(
        task=episode.task,
        category=episode.category,
        failed_trajectory=render_trajectory(episode),
        feedback=render_feedback(episode, gold_actions),
    ).with_inputs(*INPUTS)


def save_program(program: dspy.Module, folder: Path) -> Path:
    """Write the program state as extractor-<content hash>.json (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=folder)
    os.close(fd)
    try:
        program.save(tmp)
        state = json.loads(Path(tmp).read_text())
        state.pop("metadata", None)  # library versions: not part of what the program does
        final = folder / f"extractor-{content_hash(state)[:12]}.json"
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def load_extractor(path: str | Path) -> HintExtractor:
    """A compiled extractor saved by `compile_extractor` (hints.extractor.program)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hints.extractor.program: {path} not found")
    module = HintExtractor()
    try:
        module.load(str(path))
    except (json.JSONDecodeError, KeyError, ValueError) as exc:
        raise ValueError(f"hints.extractor.program: {path} is not a saved HintExtractor: {exc}") from None
    return module
