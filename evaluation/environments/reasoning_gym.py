"""reasoning-gym adapter: single-step question answering scored by each dataset's own verifier.

reset gives the question (as task and first observation) and NO valid actions, so the agent
answers in free text (the rollout leaves such replies unconstrained and unmapped); step(answer)
scores the answer with the family's `score_answer` and always ends the episode.

Splits are disjoint seed ranges (reasoning-gym has no folds of its own): an item is
`create_dataset(family, seed=s, size=1)[0]`, with s in
    train [0, 10000)   dev [10000, 20000)   test [20000, 30000).
Different seeds are different RNG streams, but a small problem space (e.g. 2-term sums of
1-digit numbers) can still produce the same question in two splits: size families accordingly.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from r2w.environment import Observation, TaskSpec

SPLIT_SEEDS: dict[str, tuple[int, int]] = {"train": (0, 10_000), "dev": (10_000, 20_000), "test": (20_000, 30_000)}
ENV_NAME = "reasoning_gym"
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\b(?:\s+is)?\s*[:=]?\s*", re.IGNORECASE)


def known_families() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def extract_answer(text: str) -> str:
    """The answer inside the last <answer>...</answer>, else the reply's first non-empty line.

    A lead-in ("The answer is", "Answer:"), a trailing period and surrounding quotes/backticks are
    dropped: the verifiers compare strings and would score "The answer is 42." below 1.
    """
    tagged = _ANSWER_TAG.findall(text or "")
    if tagged:
        answer = tagged[-1]
    else:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        answer = _LEAD_IN.sub("", lines[0]) if lines else ""
    return answer.strip().rstrip(".").strip().strip("`\"'").strip()


@lru_cache(maxsize=32)  # a teach run replays each seed n times; some families load word lists
def _dataset(family: str, seed: int, kwargs_json: str):
    import reasoning_gym

    return reasoning_gym.create_dataset(family, seed=seed, size=1, **json.loads(kwargs_json))


def _kwargs_key(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True)  # hashable even with list values (e.g. operators)


class ReasoningGymEnvironment:
    """One question at a time; stateless between episodes apart from the current item."""

    def __init__(self, family_kwargs: dict[str, dict], success_threshold: float = 1.0) -> None:
        self.family_kwargs, self.success_threshold = family_kwargs, success_threshold
        self._dataset = None
        self._entry: dict | None = None

    def reset(self, task: TaskSpec) -> tuple[str, Observation]:
        self._dataset = _dataset(task.category, task.seed, _kwargs_key(self.family_kwargs.get(task.category, {})))
        self._entry = self._dataset[0]
        question = str(self._entry["question"]).strip()
        return question, Observation(text=question, valid_actions=[])

    def step(self, action: str) -> Observation:
        if self._entry is None:
            raise RuntimeError("step() before reset()")
        answer = extract_answer(action)
        score = float(self._dataset.score_answer(answer, self._entry))
        success = score >= self.success_threshold
        verdict = "correct" if success else f"incorrect (expected {self._entry['answer']!s})"
        return Observation(
            text=f"Your answer {answer!r} is {verdict}.",
            valid_actions=[],
            done=True,
            success=success,
            score=score,
            reward=score,
            info={"answer": answer, "expected": str(self._entry["answer"])},
        )

    def gold_actions(self) -> list[str]:
        return [str(self._entry["answer"])] if self._entry is not None else []

    def close(self) -> None:
        self._entry = None


class ReasoningGymFactory:
    """Tasks round-robin over the configured families: task i of a split is family i % F."""

    name = ENV_NAME

    def __init__(
        self, families: list[str], family_kwargs: dict[str, dict] | None = None, success_threshold: float = 1.0
    ) -> None:
        if not families:
            raise ValueError("env.families: give at least one reasoning_gym family")
        known = set(known_families())
        unknown = [f for f in families if f not in known]
        if unknown:
            raise ValueError(f"env.families: unknown reasoning_gym families {unknown} (known: {sorted(known)})")
        self.families = list(families)
        self.family_kwargs = dict(family_kwargs or {})
        self.success_threshold = success_threshold
        self.category = "+".join(self.families)
        for family in self.families:  # bad per-family kwargs fail here, naming the family, not mid-rollout
            try:
                _dataset(family, 0, _kwargs_key(self.family_kwargs.get(family, {})))
            except (TypeError, ValueError, AssertionError) as exc:
                raise ValueError(f"env.family_kwargs.{family}: {exc}") from None

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_SEEDS)}")
        lo, hi = SPLIT_SEEDS[split]
        n_fam = len(self.families)
        out = []
        for i in range(offset, offset + n):
            seed = lo + i // n_fam
            if seed >= hi:
                raise ValueError(f"reasoning_gym: {split} seeds are [{lo}, {hi}); task {i} is past the end")
            out.append(TaskSpec(env=self.name, category=self.families[i % n_fam], split=split, seed=seed))
        return out

    def make(self) -> ReasoningGymEnvironment:
        return ReasoningGymEnvironment(self.family_kwargs, self.success_threshold)
