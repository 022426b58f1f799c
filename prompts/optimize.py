"""The hint extractor as a DSPy program: how a failure becomes the extractor's inputs, and how a
compiled program is saved and loaded (`hints.extractor.program`).

Compiling it against measured uplift is a stage that plays episodes: tasks/optimize.py.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import dspy

from prompts.hints import HintExtractor, extractor_inputs
from r2w.contracts import Episode, SuccessReference, content_hash

NAME = re.compile(r"^extractor-(?P<hash>[0-9a-f]{12})$")


def to_example(
    episode: Episode, gold_actions: list[str] | None = None, reference: SuccessReference | None = None
) -> dspy.Example:
    """A failed episode as the extractor's inputs (the same rendering `extract_hints` uses): contrastive
    when a verified success is given."""
    inputs = extractor_inputs(episode, gold_actions, reference)
    return dspy.Example(**inputs).with_inputs(*inputs)


def program_hash(path: str | Path) -> str:
    """The content hash a saved program is named by (`extractor-<hash>.json` -> <hash>)."""
    match = NAME.match(Path(path).stem)
    if match is None:
        raise ValueError(f"hints.extractor.program: {path} is not named extractor-<12 hex digits>.json")
    return match["hash"]


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
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("expected a JSON object")
        state.pop("metadata", None)
        if NAME.match(path.stem) and content_hash(state)[:12] != program_hash(path):
            raise ValueError("its content does not match the hash in its name (edited or damaged)")
        if "extract" not in state:
            raise KeyError("extract")
        # programs saved before the contrastive predictor existed carry only `extract`
        module.load_state({**module.dump_state(), **state})
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"hints.extractor.program: {path} is not a saved HintExtractor: {exc}") from None
    return module
