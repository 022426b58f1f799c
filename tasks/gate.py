"""Stage 5 - evaluate and gate: base, base+hints and student on held-out games, then forgetting gates.

Base and student play hint-free; `base+hints` is the BASE model with its retrieved hints (what
retrieval alone buys, and the hint-harm check), not the teacher of the teach stage, which may be
another model (`models.teacher` / `teacher_url`). All use the same seeds, decoding and action
mapping, and a random-valid-action policy is scored beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from transformers import AutoModelForCausalLM

from evaluation.canary import canary_leaks
from evaluation.environments import make_environment
from evaluation.gates import apply_gates
from evaluation.metrics import paired_counts, score_episodes, score_metrics
from evaluation.report import render_hint_set, render_markdown, render_plot, render_transcript
from evaluation.retention import (
    collect_gold_decisions,
    load_general_passages,
    load_general_prompts,
    mean_action_loglik,
    mean_kl,
    mean_nll,
    play_retention_suites,
    suite_metrics,
)
from r2w.backends.hf import TransformersBackend
from r2w.caching import expensive_stage
from r2w.config import EnvConfig, R2WConfig
from r2w.contracts import BASE, BASE_HINTS, BASE_SAMPLED, RANDOM, STUDENT, Episode, GateReport, Hint, PolicyScore
from r2w.costs import BreakEven
from r2w.datasets import DatasetRef, load_records, save_records
from r2w.registry import Lineage
from r2w.rollout import RandomPolicy, play
from r2w.scaleout import play_agent
from r2w.verifiers import make_verifier, verify_episodes


class EvaluationResult(BaseModel):
    scores: list[PolicyScore]
    retention: dict[str, float]
    paired_student_vs_base: dict[str, int]
    episodes: DatasetRef
    paired_hints_vs_base: dict[str, int] = {}  # base WITH hints vs base, same seeds: the hint-harm gate
    privacy: dict[str, float] = {}  # canary extraction counts (evaluation/canary.py)
    tokens: int = 0  # prompt + completion tokens of every evaluated episode (random: none)
    retention_scores: list[PolicyScore] = []  # base and student on each evaluate.retention_envs suite
    workers: list[str] = []  # who played the agents' episodes: in-process, or Dask workers (runtime.dask_address)

    def metrics(self) -> dict[str, float]:
        return {**score_metrics(self.scores), **{f"retention.{k}": v for k, v in self.retention.items()}}


def verified(cfg: R2WConfig, episodes: list[Episode]) -> list[Episode]:
    """Episodes with the configured callable's verdicts (absolute, per episode). A judge ranks attempts of
    one task against each other, which suits choosing teacher samples, not scoring policies: under
    `verify.kind: judge` held-out episodes keep the environment's (or the gold data's) verdicts."""
    verifier = make_verifier(cfg.verify)
    try:
        return verify_episodes(verifier, episodes)[0]
    finally:
        verifier.close()


def evaluate(
    cfg: R2WConfig,
    base_backend,
    student_backend,
    retrieve,
    hint_snapshot: str,
    imported: DatasetRef | None = None,
) -> EvaluationResult:
    """Score random/base/base+hints/student on the same held-out seeds; `hint_snapshot` keys the cache.

    `imported` (the collect stage's failures) are the tasks of `trace_replay`: its held-out test split."""
    failures = load_records(imported, Episode) if imported is not None else None
    factory = make_environment(cfg.env, failures, require_gold=cfg.verify.kind == "env")
    tasks = factory.tasks("test", cfg.evaluate.test_episodes)
    workers: set[str] = set()

    def agent(backend, name: str, temperature: float = 0.0, retrieve=None) -> list[Episode]:
        """The agent as `name` on the test tasks: here, or on Dask workers (runtime.dask_address)."""
        played = play_agent(cfg, factory, make_environment, tasks, backend, name, temperature, f"evaluate {name}",
                            retrieve=retrieve)  # fmt: skip
        workers.update(played.workers)
        return played.episodes

    base_eps = agent(base_backend, BASE)
    hinted_eps = agent(base_backend, BASE_HINTS, retrieve=retrieve)
    student_eps = agent(student_backend, STUDENT)
    random_tasks = factory.tasks("test", cfg.evaluate.random_episodes)
    random_eps = play(cfg, factory, random_tasks, RandomPolicy(cfg.runtime.seed), RANDOM, batch_size=32)
    sampled_eps: list[Episode] = []
    if cfg.evaluate.sampled_baseline:  # the strongest simple baseline may be the base's own sampling
        sampled_eps = agent(base_backend, BASE_SAMPLED, temperature=cfg.teach.temperature)
    if cfg.verify.kind == "callable":  # a team's verifier scores held-out episodes as it scored teaching
        base_eps, hinted_eps, student_eps, random_eps, sampled_eps = (
            verified(cfg, eps) for eps in (base_eps, hinted_eps, student_eps, random_eps, sampled_eps)
        )
    scores = [
        score_episodes(RANDOM, random_eps),
        score_episodes(BASE, base_eps),
        score_episodes(BASE_HINTS, hinted_eps),
        score_episodes(STUDENT, student_eps),
    ]
    if cfg.evaluate.sampled_baseline:
        scores.append(score_episodes(BASE_SAMPLED, sampled_eps))
    student_model = logits_model(student_backend, cfg.models.dtype)  # loaded once: retention and canaries share it
    retention = measure_retention(cfg, base_backend, student_model)
    retention_scores = play_retention_suites(cfg, base_backend, student_backend)
    retention |= suite_metrics(retention_scores)
    privacy = probe_canaries(cfg, student_backend, student_model)
    episodes = base_eps + hinted_eps + student_eps
    ref = save_records(episodes, Path(cfg.data_path) / "datasets", "eval-episodes", {"config_hash": cfg.hash})
    return EvaluationResult(
        scores=scores,
        retention=retention,
        paired_student_vs_base=paired_counts(student_eps, base_eps),
        paired_hints_vs_base=paired_counts(hinted_eps, base_eps),
        episodes=ref,
        privacy=privacy,
        tokens=sum(e.total_tokens for e in episodes + sampled_eps),
        retention_scores=retention_scores,
        workers=sorted(workers),
    )


def probe_canaries(cfg: R2WConfig, student_backend, student_model) -> dict[str, float]:
    """Greedy + sampled extraction attempts of every configured canary on the student."""

    if not cfg.privacy.canaries:
        return {"canary_leaks": 0.0, "canary_attempts": 0.0, "canaries": 0.0}
    return canary_leaks(cfg.privacy, student_backend, student_model, seed=cfg.runtime.seed)


def measure_retention(cfg: R2WConfig, base_backend, student_model) -> dict[str, float]:
    """KL to the base on general prompts, perplexity drift on general prose, and gold-answer log-lik on
    never-trained TWX games (`drop:<game>`) and reasoning-gym families (`drop:rg:<family>`)."""
    import math

    tok = base_backend.tokenizer
    base_model = logits_model(base_backend, cfg.models.dtype)
    ev = cfg.evaluate
    out = {"kl_base_student": mean_kl(base_model, student_model, tok, load_general_prompts(ev.kl_prompts))}
    passages = load_general_passages(ev.general_text, ev.general_passages)
    ppl_base = math.exp(mean_nll(base_model, tok, passages, ev.general_max_tokens))
    ppl_student = math.exp(mean_nll(student_model, tok, passages, ev.general_max_tokens))
    out.update(ppl_base=ppl_base, ppl_student=ppl_student, ppl_drift=ppl_student / ppl_base - 1.0)
    suites = [(game, EnvConfig(name="twx", game=game, params=ev.retention_params)) for game in ev.retention_games]
    suites += [(f"rg:{family}", EnvConfig(name="reasoning_gym", families=[family])) for family in ev.retention_families]
    for key, env_cfg in suites:
        try:
            factory = make_environment(env_cfg)
        except ValueError as exc:  # name the field the user wrote, not the adapter's own
            field = "retention_families" if key.startswith("rg:") else "retention_games"
            raise ValueError(f"evaluate.{field}: {key}: {exc}") from None
        pairs = collect_gold_decisions(factory, ev.retention_tasks, cfg.agent.history)
        base_ll = mean_action_loglik(base_model, tok, pairs)
        student_ll = mean_action_loglik(student_model, tok, pairs)
        out[f"loglik_base:{key}"] = base_ll
        out[f"loglik_student:{key}"] = student_ll
        out[f"drop:{key}"] = base_ll - student_ll
    return out


def logits_model(backend, dtype: str):
    """A transformers model with the backend's weights: retention needs logits, which vLLM does not expose."""
    if isinstance(backend, TransformersBackend):
        return backend.model  # the weights already in memory
    path = backend.model_path
    if path is None:
        raise ValueError(f"retention: the {backend.name} backend has no local weights to compute logits from")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    adapter = backend.adapter_path
    if adapter is not None:  # a LoRA student served by vLLM: the same adapter on the same base
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def gate(
    cfg: R2WConfig,
    evaluation: EvaluationResult,
    leakage: dict[str, int],
    out_dir: Path,
    lineage: Lineage | dict[str, str],
    hints: list[Hint] | None = None,
    break_even: BreakEven | None = None,
) -> tuple[GateReport, Path]:
    """Apply the configured gate policy and write what a reviewer reads to out_dir: the report (markdown,
    JSON, plot), a base-vs-student transcript on the same held-out tasks, and the hint set taught with."""
    lineage = Lineage.model_validate(lineage)
    report = apply_gates(
        cfg.gate,
        evaluation.scores,
        evaluation.retention,
        leakage,
        privacy=evaluation.privacy,
        hints_vs_base=evaluation.paired_hints_vs_base,
        retention_scores=evaluation.retention_scores,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report, lineage.model_dump(exclude_defaults=True), break_even=break_even)
    (out_dir / "gate_report.md").write_text(markdown)
    (out_dir / "gate_report.json").write_text(report.model_dump_json(indent=2))
    (out_dir / "paired_student_vs_base.json").write_text(json.dumps(evaluation.paired_student_vs_base))
    (out_dir / "paired_base_hints_vs_base.json").write_text(json.dumps(evaluation.paired_hints_vs_base))
    render_plot(report, out_dir / "gate_report.png")
    episodes = load_records(evaluation.episodes, Episode)
    base, student = ([e for e in episodes if e.policy == p] for p in (BASE, STUDENT))
    (out_dir / "transcript.md").write_text(render_transcript(base, student))
    (out_dir / "hints.json").write_text(render_hint_set(hints or [], lineage.hint_snapshot))
    return report, out_dir


evaluate_task = task(
    **expensive_stage("evaluate", "models", "env", "agent", "evaluate", "verify", "hints", "runtime", "privacy")
)(evaluate)
gate_task = task(name="gate", cache_policy=NO_CACHE)(gate)
