"""One generation interface for every backend (transformers, vLLM engine, OpenAI server).

Rollouts, teacher generation, evaluation and the DSPy extractor all call `generate` with
chat messages; a backend never sees environments or hints. `choices` constrains each
completion to one of the given strings (the valid actions), so every policy is compared
under the same action mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from r2w.contracts import Message


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    """All samples for one prompt, with token accounting."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int] = field(default_factory=list)


class GenerationBackend(Protocol):
    name: str

    def generate(
        self,
        prompts: list[list[Message]],
        params: SamplingParams,
        choices: list[list[str]] | None = None,
    ) -> list[Completion]: ...

    def close(self) -> None: ...
