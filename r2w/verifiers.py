"""The verifier seam: who decides which teacher attempts are kept, where there may be no simulator.

Three verifiers, chosen by the config's `verify:` section:
- `env`: the environment's own verdict (`Episode.success`), today's behaviour;
- `callable`: a team's function named by import path, `fn(episode) -> bool | float`, guarded like an
  environment plugin (r2w/plugins.py): raising, a wrong return type or a hang is a `PluginError` naming
  the callable, the task and the field;
- `judge`: an LLM (behind an OpenAI-compatible URL, or the local base model) that ranks the n attempts of
  ONE task against each other in one prompt and answers a 0..1 score per attempt in JSON, as OpenPipe's
  RULER does: relative scores need no absolute reward. A reply that does not parse keeps nothing for that
  task and is counted (`Verifier.malformed`), never a crash.

Every verdict names its verifier (`Verdict.verdict_by`, copied into `Episode.verdict_by`: "env",
"callable:pkg.mod:fn", "judge:<model>"). `verify_group` is the one call for one task's attempts; a stage
with many tasks builds the verifier once (`make_verifier`) and calls `verify_episodes`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from textwrap import dedent
from typing import Annotated, Any, Protocol

import json_repair
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from r2w.backends.base import GenerationBackend, SamplingParams
from r2w.backends.openai_server import OpenAIServerBackend
from r2w.config import VerifyConfig
from r2w.contracts import Episode, Message
from r2w.plugins import PluginError, import_object

log = logging.getLogger(__name__)


class Verdict(BaseModel):
    """One attempt's verdict: kept or not, its score, and which verifier decided."""

    model_config = ConfigDict(extra="forbid")

    episode_id: str
    task_id: str
    keep: bool
    score: float
    verdict_by: str  # env | callable:pkg.mod:fn | judge:<model>
    judged: bool = False  # an LLM's opinion, not a check: say so wherever the verdict is shown
    explanation: str = ""
    problem: str = ""  # why no verdict could be reached (a malformed judge reply); keep is then False


class Verifier(Protocol):
    label: str
    malformed: int  # groups whose verdict could not be reached (judge replies that did not parse)

    def verify_groups(self, groups: list[list[Episode]]) -> list[list[Verdict]]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------- env


class EnvVerifier:
    """The environment's own verdict, as every rollout already records it."""

    label = "env"
    malformed = 0

    def verify_groups(self, groups: list[list[Episode]]) -> list[list[Verdict]]:
        return [
            [
                Verdict(
                    episode_id=e.episode_id,
                    task_id=e.task_id,
                    keep=e.success,
                    score=e.score,
                    verdict_by=e.verdict_by or "env",
                )
                for e in group
            ]  # fmt: skip
            for group in groups
        ]

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- callable


class CallableVerifier:
    """A team's `fn(episode) -> bool | float`; a number is kept at or above `threshold`.

    The function gets a deep copy of the finished episode (final answer: `steps[-1].response`; tool calls
    and tool results per step; `gold` when an importer found reference data), so it cannot alter what is
    stored. Each call must answer within `timeout_s`.
    """

    def __init__(self, path: str, threshold: float, timeout_s: float) -> None:
        self.fn: Callable[[Episode], Any] = import_object(path, field="verify.callable")
        if not callable(self.fn):
            raise PluginError(f"verify.callable: {path} is a {type(self.fn).__name__}, expected a function")
        self.path, self.threshold, self.timeout_s = path, threshold, timeout_s
        self.label, self.malformed, self.hung = f"callable:{path}", 0, False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r2w-verifier")

    def verify_groups(self, groups: list[list[Episode]]) -> list[list[Verdict]]:
        return [[self._verdict(e) for e in group] for group in groups]

    def _verdict(self, episode: Episode) -> Verdict:
        where = f"verify.callable {self.path}: task {episode.task_id}"
        if self.hung:
            raise PluginError(f"{where}: not called, an earlier call is still running past verify.timeout_s")
        future = self._pool.submit(self.fn, episode.model_copy(deep=True))
        try:
            value = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self.hung = True
            raise PluginError(f"{where}: did not answer within verify.timeout_s={self.timeout_s:g} s") from None
        except Exception as exc:  # noqa: BLE001 - re-raised with the callable and task named
            raise PluginError(f"{where}: raised {exc!r}") from exc
        if isinstance(value, bool):
            keep, score = value, float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            keep, score = value >= self.threshold, float(value)
        else:
            got = type(value).__name__ if not isinstance(value, float) else repr(value)
            raise PluginError(f"{where}: returned {got}, expected bool or a finite number (the score)")
        return Verdict(episode_id=episode.episode_id, task_id=episode.task_id, keep=keep, score=score,
                       verdict_by=self.label)  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- judge

# The grading standards of OpenPipe ART's RULER (src/art/rewards/ruler.py), reworded: relative, with a
# large gap between attempts that reach the goal and those that do not.
DEFAULT_RUBRIC = dedent(
    """\
    - An attempt that achieves the task's goal must score much higher than one that does not.
    - Of two attempts that achieve it, the more direct one (no wrong or needless calls) scores higher.
    - Small differences in quality get small differences in score, large ones large.
    - An attempt that makes progress without finishing may get partial credit."""
)

JUDGE_SYSTEM = """All attempts below were given the same task. Consider each of them and give each a score \
between 0 and 1 for how well it achieved the task's goal.

Grading standards:
{rubric}

Reply with JSON only, one entry per attempt, in this shape:
{{"scores": [{{"trajectory_id": "1", "explanation": "<one short sentence>", "score": 0.0}}, ...]}}"""


class JudgedAttempt(BaseModel):
    trajectory_id: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]  # "1" or 1
    explanation: str = ""
    score: float = Field(ge=0.0, le=1.0)


class JudgeReply(BaseModel):
    """The reply RULER asks its judge for: one score per attempt, by the attempt's id."""

    scores: list[JudgedAttempt]


def reply_schema(n: int) -> dict:
    """The JSON schema of a reply for n attempts (for backends that decode to a schema: vLLM)."""
    item = {
        "type": "object",
        "properties": {
            "trajectory_id": {"type": "string", "enum": [str(i) for i in range(1, n + 1)]},
            "explanation": {"type": "string", "maxLength": 160},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["trajectory_id", "explanation", "score"],
        "additionalProperties": False,
    }
    array = {"type": "array", "items": item, "minItems": n, "maxItems": n}
    return {"type": "object", "properties": {"scores": array}, "required": ["scores"], "additionalProperties": False}


class MalformedReply(ValueError):
    """The judge's reply has no usable score for every attempt."""


def parse_reply(text: str, n: int) -> list[JudgedAttempt]:
    """The judge's scores in attempt order, or MalformedReply saying what was wrong.

    Why json_repair before pydantic: small and hosted judges alike wrap JSON in code fences or prose, or
    leave a trailing comma; json_repair (a maintained library, already a DSPy dependency) reads those, and
    pydantic then holds the result to the reply's shape, so garbage still fails.
    """
    try:
        data = json_repair.loads(text)
    except Exception as exc:  # noqa: BLE001 - any failure to read the text is a malformed reply
        raise MalformedReply(f"not JSON ({exc})") from None
    if isinstance(data, list):  # a bare list of scores
        data = {"scores": data}
    try:
        reply = JudgeReply.model_validate(data, strict=False)
    except ValidationError as exc:
        raise MalformedReply(f"not the expected shape: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
    by_id = {s.trajectory_id.strip(): s for s in reply.scores}
    expected = [str(i) for i in range(1, n + 1)]
    if len(reply.scores) != n or sorted(by_id) != sorted(expected):
        raise MalformedReply(
            f"expected one score for each of ids {expected}, got ids {[s.trajectory_id for s in reply.scores]}"
        )
    return [by_id[i] for i in expected]


def keep_flags(scores: list[float], threshold: float, top: int = 0) -> list[bool]:
    """Keep an attempt whose score reaches `threshold` and, with `top` > 0, is among the `top` best
    (ties broken by attempt order, so the choice is reproducible)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    allowed = set(ranked[:top]) if top else set(ranked)
    return [s >= threshold and i in allowed for i, s in enumerate(scores)]


def _cut(text: str, limit: int) -> str:
    """Head and tail of an over-long attempt: the start shows the approach, the end the outcome."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters cut ...]\n{text[-half:]}"


def render_attempt(episode: Episode, limit: int) -> str:
    """One attempt as the judge reads it: what the agent did and what came back, never its hints."""
    lines = []
    for step in episode.steps:
        if step.valid_actions:  # a text game: what the agent saw, then what it chose
            lines += [f"observation: {step.observation.strip()}", f"action: {step.action}"]
            continue
        lines.append(f"assistant: {step.action}")
        lines += [f"{m.role}{f' ({m.name})' if m.name else ''}: {m.content}" for m in step.tool_results]
    if not episode.steps:
        lines.append("(no steps)")
    return _cut("\n".join(lines), limit)


def judge_prompt(group: list[Episode], rubric: str, limit: int) -> list[Message]:
    """One prompt with every attempt of one task: the shared context once, then each attempt by id."""
    first = group[0]
    context = [f"<task>\n{first.task.strip()}\n</task>"]
    if first.tools:
        schemas = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False, sort_keys=True) for t in first.tools)
        context.append(f"<tools>\n{schemas}\n</tools>")
    if first.gold:  # reference data an importer found (never shown to the agent): a judge may compare
        context.append(f"<reference>\n{json.dumps(first.gold, ensure_ascii=False, default=str)}\n</reference>")
    attempts = [f'<trajectory id="{i}">\n{render_attempt(e, limit)}\n</trajectory>' for i, e in enumerate(group, 1)]
    return [
        Message(role="system", content=JUDGE_SYSTEM.format(rubric=rubric.strip() or DEFAULT_RUBRIC)),
        Message(role="user", content="\n".join(context) + "\n\nAttempts:\n\n" + "\n\n".join(attempts)),
    ]


class JudgeVerifier:
    """RULER-style relative judging: one prompt per task with all its attempts, one batched generate call."""

    def __init__(self, cfg: VerifyConfig, backend: GenerationBackend, model: str, owned: bool = False) -> None:
        self.cfg, self.backend, self.owned = cfg, backend, owned
        self.model, self.label, self.malformed = model, f"judge:{model}", 0
        self.problems: list[str] = []  # why each malformed group had no verdict (for logs; no reply text)

    def verify_groups(self, groups: list[list[Episode]]) -> list[list[Verdict]]:
        prompts = [judge_prompt(g, self.cfg.rubric, self.cfg.max_chars_per_attempt) for g in groups]
        params = SamplingParams(n=1, temperature=0.0, max_tokens=self.cfg.judge_max_tokens)
        if getattr(self.backend, "constrains_json", False):
            schemas = [json.dumps(reply_schema(len(g))) for g in groups]
            completions = self.backend.generate(prompts, params, schemas=schemas)  # type: ignore[call-arg]
        else:
            completions = self.backend.generate(prompts, params)
        before = self.malformed
        verdicts = [self._group(g, c.texts[0] if c.texts else "") for g, c in zip(groups, completions, strict=True)]
        if self.malformed > before:
            log.warning("%s: %d of %d task(s) got a malformed reply and keep nothing; first: %s",
                        self.label, self.malformed - before, len(groups), self.problems[before])  # fmt: skip
        return verdicts

    def _group(self, group: list[Episode], reply: str) -> list[Verdict]:
        common = {"verdict_by": self.label, "judged": True}
        try:
            scored = parse_reply(reply, len(group))
        except MalformedReply as exc:
            self.malformed += 1
            self.problems.append(f"{group[0].task_id}: {exc}")
            problem = f"malformed judge reply: {exc}"
            return [Verdict(episode_id=e.episode_id, task_id=e.task_id, keep=False, score=0.0, problem=problem,
                            **common) for e in group]  # fmt: skip
        flags = keep_flags([s.score for s in scored], self.cfg.keep_threshold, self.cfg.keep_top)
        return [
            Verdict(
                episode_id=e.episode_id, task_id=e.task_id, keep=k, score=s.score, explanation=s.explanation, **common
            )  # fmt: skip
            for e, s, k in zip(group, scored, flags, strict=True)
        ]

    def close(self) -> None:
        if self.owned:
            self.backend.close()


def judge_backend(cfg: VerifyConfig) -> OpenAIServerBackend:
    """The judge behind `verify.judge_url`; the key is read from the variable `verify.api_key_env` names and
    lives only in the HTTP client's headers (never in a config dump, a record, a log line or an error)."""
    key = None
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ValueError(f"verify.api_key_env: the environment variable {cfg.api_key_env} is not set or empty")
    return OpenAIServerBackend(cfg.judge_url or "", model=cfg.judge_model, api_key=key, choice_mode="free",
                               timeout=cfg.timeout_s)  # fmt: skip


def _model_name(backend: GenerationBackend) -> str:
    path = getattr(backend, "model_path", None)
    return Path(path).name if path else getattr(backend, "model", None) or backend.identity


def make_verifier(cfg: VerifyConfig, backend: GenerationBackend | None = None) -> Verifier:
    """The configured verifier; `backend` is the local judge when `verify.judge_url` is not set."""
    if cfg.kind == "env":
        return EnvVerifier()
    if cfg.kind == "callable":
        return CallableVerifier(cfg.callable or "", cfg.keep_threshold, cfg.timeout_s)
    if cfg.judge_url:
        remote = judge_backend(cfg)
        return JudgeVerifier(cfg, remote, cfg.judge_model or remote.model, owned=True)
    if backend is None:
        raise ValueError("verify.kind judge: set verify.judge_url, or pass the local base model as the judge")
    return JudgeVerifier(cfg, backend, _model_name(backend))


def group_by_task(episodes: list[Episode]) -> list[list[Episode]]:
    """Episodes grouped by task id, groups and members in their first-seen order."""
    groups: dict[str, list[Episode]] = {}
    for e in episodes:
        groups.setdefault(e.task_id, []).append(e)
    return list(groups.values())


def verify_group(cfg: VerifyConfig, attempts: list[Episode], backend: GenerationBackend | None = None) -> list[Verdict]:
    """Verdicts on the attempts of ONE task, in their order (the seam's one call for other stages)."""
    if len({e.task_id for e in attempts}) > 1:
        raise ValueError(
            f"verify_group: expected the attempts of one task, got {sorted({e.task_id for e in attempts})}"
        )
    if not attempts:
        return []
    verifier = make_verifier(cfg, backend)
    try:
        return verifier.verify_groups([attempts])[0]
    finally:
        verifier.close()


def apply_verdict(episode: Episode, verdict: Verdict) -> Episode:
    """The episode as its verifier judged it: success = kept; a judged one says so in `outcome`."""
    if verdict.verdict_by == (episode.verdict_by or "env"):  # the environment's own verdict: nothing changes
        return episode if episode.verdict_by else episode.model_copy(update={"verdict_by": "env"})
    how = "judged" if verdict.judged else "verified"
    outcome = f"{how}: {'kept' if verdict.keep else 'rejected'} (score {verdict.score:.2f})"
    if verdict.problem:
        outcome = f"{how}: rejected ({verdict.problem[:200]})"
    return episode.model_copy(
        update={"success": verdict.keep, "score": verdict.score, "verdict_by": verdict.verdict_by, "outcome": outcome}
    )


def verify_episodes(verifier: Verifier, episodes: list[Episode]) -> tuple[list[Episode], list[Verdict]]:
    """Every episode judged within its task's group; episodes come back in their order with the verdict applied."""
    groups = group_by_task(episodes)
    by_object = {id(e): v for g, vs in zip(groups, verifier.verify_groups(groups), strict=True)
                 for e, v in zip(g, vs, strict=True)}  # fmt: skip
    verdicts = [by_object[id(e)] for e in episodes]
    return [apply_verdict(e, v) for e, v in zip(episodes, verdicts, strict=True)], verdicts
