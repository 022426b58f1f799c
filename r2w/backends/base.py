"""One generation interface for every backend (transformers, vLLM engine, OpenAI server).

Rollouts, teacher generation, evaluation and the DSPy extractor all call `generate` with
chat messages; a backend never sees environments or hints. `choices` constrains each
completion to one of the given strings (the valid actions), so every policy is compared
under the same action mapping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from r2w.contracts import Message
from r2w.tool_calls import template_messages


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int = 0
    stop: tuple[str, ...] = ()
    # The key of this call's random draws (r2w.rollout sets it from the batch's tasks, samples and step). When set,
    # the draws depend on (seed, backend seed, draw) only, never on how many calls came before: a batch played
    # on a Dask worker samples what it samples in one process. None: a per-call counter (repeated calls differ).
    draw: int | None = None


def draw_seed(params: SamplingParams, backend_seed: int, calls: int, index: int = 0) -> int:
    """A 32-bit seed for one call (and row `index`): from the draw key when set, else from the call counter."""
    key = f"{params.seed}:{backend_seed}:{'d' + str(params.draw) if params.draw is not None else calls}:{index}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


@dataclass
class Completion:
    """All samples for one prompt, with token accounting."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int] = field(default_factory=list)

    @classmethod
    def of_samples(cls, texts: list[str], prompt_tokens: int, counts: list[int], n: int) -> Completion:
        """Servers return one sample for a greedy request of n: repeat it so every caller gets n."""
        if len(texts) == 1 and n > 1:
            texts, counts = texts * n, counts * n
        return cls(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=counts)


@dataclass
class ChoiceScores:
    """Log-likelihood of each allowed reply after one prompt (action selection by scoring)."""

    logprobs: list[float]  # per choice: sum of log p(choice tokens + end of turn | prompt)
    prompt_tokens: int
    choice_tokens: list[int]


def render_prompt(tokenizer: Any, messages: list[Message], tools: list[dict] | None = None) -> str:
    """The prompt text of one generation. Without `tools`: exactly as r2w always rendered it (text-fallback tool
    prompts included). With `tools` (the native tool path, r2w/tool_calls.py): the model's own template renders
    them and the structured tool calls and tool messages."""
    if tools:
        return tokenizer.apply_chat_template(
            template_messages(messages), tools=tools, tokenize=False, add_generation_prompt=True
        )
    return tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True)


def check_tools(prompts: list, tools: list[list[dict] | None] | None) -> None:
    """`tools` is one tool list (or None) per prompt, or None."""
    if tools is not None and len(tools) != len(prompts):
        raise ValueError(f"tools: expected one tool list (or None) per prompt ({len(prompts)}), got {len(tools)}")


def check_choices(prompts: list, choices: list[list[str]] | None) -> None:
    """`choices` is one list of allowed replies per prompt, or None."""
    if choices is not None and len(choices) != len(prompts):
        raise ValueError(f"choices: expected one list per prompt ({len(prompts)}), got {len(choices)}")


@runtime_checkable
class GenerationBackend(Protocol):
    """What every caller may use. `identity` names the weights (model path, adapter hash, dtype, seed): it
    enters Prefect cache keys and every episode's provenance. `model_path`/`adapter_path` are the local
    weights (None for a remote server): retention and canary probes compute logits from them. Backends that render
    prompts with the model's own template (transformers, the vLLM engine) also take `tools=` per prompt in
    `generate` and say so with `native_tools = True` (r2w/tool_calls.py)."""

    name: str
    identity: str
    model_path: Path | None
    adapter_path: Path | None

    @property
    def tokenizer(self) -> Any: ...  # the model's own tokenizer and chat template (raises for a remote server)

    def generate(
        self,
        prompts: list[list[Message]],
        params: SamplingParams,
        choices: list[list[str]] | None = None,
    ) -> list[Completion]: ...

    def close(self) -> None: ...


@runtime_checkable
class ScoringBackend(GenerationBackend, Protocol):
    """A backend that can score given replies by log-likelihood (`agent.action_selection: score`)."""

    def score(self, prompts: list[list[Message]], choices: list[list[str]]) -> list[ChoiceScores]: ...
