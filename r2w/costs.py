"""What a round costs, and when the student pays it back.

Each stage is measured where the flow calls it (flows/run.py `Run.stage`): wall seconds, CPU
seconds of this process and its children (user + system; live children such as a vLLM server
through psutil, reaped ones through RUSAGE_CHILDREN), and the tokens the stage generated (its
result's `tokens`: rollouts, teacher attempts, evaluation episodes; a cached stage spent none).

Break-even, in tokens (one unit for both sides):
- savings per episode = mean tokens per episode of base+hints - of the student (retrieved hints
  are prompt tokens the hint-free student no longer reads), from the held-out evaluation;
- daily savings = savings per episode x `cadence.episodes_per_day`;
- round cost = tokens the round generated + CPU seconds of its non-generating stages (hints,
  build_examples, train, ...) converted at the round's own generation rate (generated tokens per
  CPU second of the generating stages), i.e. "what else the same CPU could have generated";
- days to break even = round cost / daily savings (None when the student saves nothing).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from pydantic import BaseModel


class StageCost(BaseModel):
    wall_s: float = 0.0
    cpu_s: float = 0.0
    tokens: int = 0  # generated (prompt + completion) tokens; 0 for a cached stage
    usd: float = 0.0  # tokens billed by a priced hosted server (models.teacher_usd_per_1m_tokens); 0 when local

    def metrics(self, stage: str) -> dict[str, float]:
        return {f"cost.{stage}.{k}": float(v) for k, v in self.model_dump().items()}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, its reaped children and its live children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    try:
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:  # exited between listing and reading: counted once reaped
                continue
    except psutil.Error:
        pass
    return total


@contextmanager
def measured() -> Iterator[StageCost]:
    """Fill a StageCost with the wall and CPU seconds of the block (tokens are set by the caller)."""
    cost = StageCost()
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield cost
    finally:
        cost.wall_s = round(time.perf_counter() - wall, 3)
        cost.cpu_s = round(max(cpu_seconds() - cpu, 0.0), 3)


class BreakEven(BaseModel):
    savings_per_episode: float  # tokens: base+hints minus student, per held-out episode
    episodes_per_day: int
    daily_savings: float  # tokens a day
    round_tokens: int  # tokens the round generated
    round_cpu_s: float
    tokens_per_cpu_s: float  # the round's measured generation rate
    round_cost_tokens: float  # generated tokens + non-generating CPU seconds x the rate
    days: float | None  # round_cost_tokens / daily_savings; None when the student saves nothing

    def metrics(self) -> dict[str, float]:
        out = {f"breakeven.{k}": float(v) for k, v in self.model_dump().items() if v is not None}
        return out

    def text(self) -> str:
        saved = f"{self.savings_per_episode:+.0f} tokens/episode x {self.episodes_per_day}/day"
        cost = f"round cost {self.round_cost_tokens:,.0f} token-equivalents ({self.round_cpu_s:.0f} CPU s)"
        if self.days is None:
            return f"never: the student saves {saved} ({cost})"
        return f"{self.days:.2f} days: saves {saved} = {self.daily_savings:,.0f}/day against {cost}"


def break_even(
    costs: dict[str, StageCost], hinted_tokens: float, student_tokens: float, episodes_per_day: int
) -> BreakEven:
    """Days until the student's saved retrieval tokens pay back what the round spent (see module doc)."""
    generating = [c for c in costs.values() if c.tokens > 0]
    tokens = sum(c.tokens for c in generating)
    gen_cpu = sum(c.cpu_s for c in generating)
    rate = tokens / gen_cpu if gen_cpu > 0 else 0.0
    other_cpu = sum(c.cpu_s for c in costs.values() if c.tokens == 0)
    cost = tokens + other_cpu * rate
    savings = hinted_tokens - student_tokens
    daily = savings * episodes_per_day
    return BreakEven(
        savings_per_episode=round(savings, 2),
        episodes_per_day=episodes_per_day,
        daily_savings=round(daily, 2),
        round_tokens=tokens,
        round_cpu_s=round(sum(c.cpu_s for c in costs.values()), 3),
        tokens_per_cpu_s=round(rate, 3),
        round_cost_tokens=round(cost, 1),
        days=round(cost / daily, 4) if daily > 0 else None,
    )
