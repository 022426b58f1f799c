"""Optimising the hint extractor against what hints are for: the teacher's success uplift.

Optimising the extractor is a stage of its own (`r2w hints optimize`): it plays episodes.

`HintUplift` is a DSPy metric, `metric(example, prediction, trace=None) -> float`: it parses
the predicted hints strictly (`parse_hints`; unparseable or empty output scores 0.0), then plays
a fixed set of training tasks of the example's category with the teacher twice — without hints
and with those hints in the prompt's hints block — and returns success(with) - success(without),
in [-1, 1]. Both sides use the same tasks, sample indices, seed and sampling, so the difference
is paired. Success rates are cached per (category, hints block): the no-hints baseline is
played once per category, and a hint text seen again costs nothing.

`compile_extractor` runs `dspy.BootstrapFewShot` with that metric: it runs the extractor on each
training failure and keeps as few-shot demos the outputs whose uplift reaches `min_uplift`, then
saves the compiled program as JSON under <data_dir>/prompts/extractor-<hash>.json. Point
`hints.extractor.program` at that file to extract with it (tasks/hints.py loads it).

Cost (why it is not in the default flow): one metric call with new hint text plays
`tasks x samples` teacher episodes of up to `env.max_steps` steps (one batched generate per
step), plus the same again once per category for the baseline. A compile makes one extractor
call and at most one metric call per training failure, so at most
`(max_failures + categories) x tasks x samples` episodes: with the demo config (SmolLM2, 15 steps,
~0.1-0.3 s per batched step on 2 CPU cores) and 4 failures x 4 tasks x 2 samples that is ~48
episodes, a few minutes; a meaningful estimate of uplift needs 50+ tasks per category (the
standard error of a difference of two rates at n=8 is ~0.25), i.e. hours on CPU.

    r2w hints optimize --config demo --tasks 4 --samples 2 --max-failures 4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dspy

from evaluation.environments import make_environment
from prompts.hints import HintExtractor, parse_hints
from prompts.optimize import save_program, to_example
from r2w.agent_prompt import render_hints_block
from r2w.backends import GenerationBackend, agent_backends
from r2w.backends.dspy_lm import make_extractor_lm
from r2w.config import R2WConfig
from r2w.contracts import Episode, Hint
from r2w.datasets import load_records
from r2w.environment import TaskSpec
from r2w.rollout import agent_policy, run_episodes
from r2w.runtime import set_torch_threads
from tasks.collect import collect_failures
from tasks.hints import select_failures


@dataclass
class MetricCall:
    """One scored prediction, kept for the compile report."""

    category: str
    hints: list[str]
    uplift: float


class HintUplift:
    """DSPy metric: the teacher's success with the predicted hints minus without, on fixed train tasks."""

    def __init__(
        self,
        cfg: R2WConfig,
        teacher: GenerationBackend,
        tasks: int = 2,
        samples: int = 1,
        temperature: float | None = None,
    ) -> None:
        if tasks < 1 or samples < 1:
            raise ValueError(f"HintUplift: tasks and samples must be >= 1, got {tasks}, {samples}")
        self.cfg = cfg
        self.factory = make_environment(cfg.env)
        self.n_tasks, self.samples = tasks, samples
        temp = cfg.teach.temperature if temperature is None else temperature
        self.policy = agent_policy(cfg, teacher, "teacher", temp)
        self.rates: dict[tuple[str, str], float] = {}
        self.episodes_played = 0
        self.calls: list[MetricCall] = []
        self._tasks: dict[str, list[TaskSpec]] = {}

    def tasks_for(self, category: str) -> list[TaskSpec]:
        """The first `tasks` training tasks of `category` (the same ones on every call)."""
        if category not in self._tasks:
            pool = self.factory.tasks("train", self.n_tasks * max(1, len(self.cfg.env.families)))
            chosen = [t for t in pool if t.category == category][: self.n_tasks]
            if not chosen:
                served = sorted({t.category for t in pool})
                raise ValueError(f"HintUplift: category {category!r} is not served by env {served}")
            self._tasks[category] = chosen
        return self._tasks[category]

    def success_rate(self, category: str, hints: list[Hint]) -> float:
        block = render_hints_block(hints)
        key = (category, block)
        if key not in self.rates:
            ids = [h.hint_id for h in hints]
            jobs = [(t, i) for t in self.tasks_for(category) for i in range(self.samples)]
            episodes = run_episodes(  # fixed hints (not retrieved): the block under test, on every task
                self.factory,
                jobs,
                self.policy,
                self.cfg.env.max_steps,
                self.cfg.agent.batch_size,
                config_hash=self.cfg.hash,
                desc=f"hint uplift ({'with' if hints else 'without'} hints)",
                hints_for=lambda task, text, obs: (ids, block),
            )
            self.episodes_played += len(episodes)
            self.rates[key] = sum(e.success for e in episodes) / len(episodes)
        return self.rates[key]

    def uplift(self, category: str, pairs: list[tuple[str, str]]) -> float:
        """success(with these (applicability, text) hints) - success(without), same tasks and seeds."""
        hints = [
            Hint(hint_id=Hint.make_id(text, category), text=text, applicability=cond, category=category)
            for cond, text in pairs
        ]
        return self.success_rate(category, hints) - self.success_rate(category, [])

    def __call__(self, example, prediction, trace=None) -> float:
        category = str(example.category)
        raw = getattr(prediction, "hints", None)
        pairs, _ = parse_hints(str(raw or ""), category, self.cfg.hints.max_chars)
        value = self.uplift(category, pairs) if pairs else 0.0
        self.calls.append(MetricCall(category, [f"{c}: {t}" for c, t in pairs], value))
        return value


@dataclass
class CompileResult:
    path: Path
    demos: int
    training_failures: int
    episodes_played: int
    calls: list[MetricCall] = field(default_factory=list)


def compile_extractor(
    cfg: R2WConfig,
    failures: list[Episode],
    lm: dspy.BaseLM,
    teacher: GenerationBackend,
    optimizer: Literal["bootstrap"] = "bootstrap",
    tasks: int = 2,
    samples: int = 1,
    max_failures: int | None = None,
    max_demos: int = 2,
    min_uplift: float = 0.01,
) -> CompileResult:
    """Compile the extractor with BootstrapFewShot against `HintUplift`; save it as JSON; return where.

    Only outputs with uplift >= `min_uplift` (> 0) become demos, so a program compiled from
    failures whose hints never helped has no demos and behaves like the uncompiled one.
    """
    if optimizer != "bootstrap":
        raise ValueError(f"optimizer {optimizer!r}: only 'bootstrap' (dspy.BootstrapFewShot) runs offline here")
    if min_uplift <= 0:
        raise ValueError(f"min_uplift must be > 0 (a hint that does not help is not a demo), got {min_uplift}")
    chosen = select_failures(failures, cfg.hints.max_failures if max_failures is None else max_failures)
    if not chosen:
        raise ValueError("compile_extractor: no failed episodes to train on")
    metric = HintUplift(cfg, teacher, tasks=tasks, samples=samples)
    teleprompter = dspy.BootstrapFewShot(
        metric=metric,
        metric_threshold=min_uplift,
        max_bootstrapped_demos=max_demos,
        max_labeled_demos=0,
        max_errors=len(chosen) + 1,  # a weak LM's unparseable answer is data, not a reason to stop
    )
    with dspy.context(lm=lm):
        compiled = teleprompter.compile(HintExtractor(), trainset=[to_example(e) for e in chosen])
    path = save_program(compiled, cfg.data_path / "prompts")
    return CompileResult(
        path=path,
        demos=len(compiled.extract.demos),
        training_failures=len(chosen),
        episodes_played=metric.episodes_played,
        calls=metric.calls,
    )


def optimize_extractor(
    cfg: R2WConfig,
    failures: Path | None = None,
    tasks: int = 2,
    samples: int = 1,
    max_failures: int | None = None,
    max_demos: int = 2,
) -> CompileResult:
    """`r2w hints optimize`: compile the extractor on a failures dataset (default: the newest one; none
    collected yet: the base agent plays `collect.episodes` training games first)."""
    set_torch_threads(cfg.runtime.torch_threads)
    models = agent_backends(cfg)
    if failures is None:
        found = sorted(
            (cfg.data_path / "datasets" / "failures").glob("*/data.parquet"), key=lambda p: p.stat().st_mtime
        )
        failures = found[-1].parent if found else Path(collect_failures(cfg, models.base).failures.path)
    if not (failures / "manifest.json").is_file():
        raise ValueError(f"--failures {failures}: not a dataset folder (no manifest.json)")
    episodes = load_records(failures, Episode)
    lm = make_extractor_lm(cfg.hints.extractor, *models.extractor())
    return compile_extractor(
        cfg, episodes, lm, models.teacher, tasks=tasks, samples=samples, max_failures=max_failures, max_demos=max_demos
    )
