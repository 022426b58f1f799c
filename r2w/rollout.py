"""Lockstep batched rollouts: many episodes advance together, one generate call per step.

Sending every live episode's prompt in one batch is what makes batched backends (vLLM,
padded transformers generate) pay off. Policies see only prompts and valid actions.

"The agent" lives here: `agent_policy` builds it the way every stage runs it (same prompt, same
action mapping, only sampling differs), and `play` is the one "play these tasks" helper that
collect, teach, evaluate, replay and the benchmarks call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from rapidfuzz import fuzz, process
from tqdm.auto import tqdm

from r2w.agent_prompt import build_chat_messages, build_messages, render_hints_block
from r2w.backends.base import GenerationBackend, SamplingParams, ScoringBackend
from r2w.config import R2WConfig
from r2w.contracts import Episode, Hint, Message, Step, ToolCall, ToolFunction, content_hash
from r2w.environment import (
    ChatEnvironment,
    ChatEnvironmentFactory,
    Environment,
    EnvironmentFactory,
    Observation,
    TaskSpec,
    TurnResult,
)
from r2w.tool_calls import TEXT_FALLBACK, parse_reply, render_turn, reply_schema, tool_format


@dataclass
class EpisodeState:
    task: TaskSpec
    task_text: str
    obs: Observation
    hints_block: str = ""
    hint_ids: list[str] = field(default_factory=list)
    sample_index: int = 0
    history: list[tuple[str, str]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class ChatState:
    """One live tool-calling episode: the task's conversation so far and the tools it offers."""

    task: TaskSpec
    conversation: list[Message]
    tools: list[dict]
    hints_block: str = ""
    hint_ids: list[str] = field(default_factory=list)
    sample_index: int = 0
    steps: list[Step] = field(default_factory=list)
    result: TurnResult = field(default_factory=TurnResult)
    started: float = field(default_factory=time.perf_counter)

    @property
    def task_text(self) -> str:
        return next((m.content for m in self.conversation if m.role == "user"), "")


@dataclass
class Decision:
    action: str
    response: str
    prompt: list[Message]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turn: Message | None = None  # chat tasks: the parsed assistant turn (text and tool calls)
    malformed: str = ""  # chat tasks: why the reply's tool calls did not parse


HintProvider = Callable[[TaskSpec, str, Observation], tuple[list[str], str]]


class Policy(Protocol):
    name: str

    def act(self, states: list[EpisodeState]) -> list[Decision]: ...


class LLMPolicy:
    """Prompt the model with task, recent history and valid actions; constrain or map its reply.

    States without valid actions (single-step reasoning tasks) get a free-text answer instead:
    no constraint, no mapping, up to `answer_max_tokens` new tokens.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        name: str,
        params: SamplingParams,
        history: int = 3,
        constrained: bool = True,
        answer_max_tokens: int | None = None,
        selection: str = "generate",
        constrain_tools: bool = True,
        parallel_tools: bool = False,
    ) -> None:
        self.backend, self.name, self.params = backend, name, params
        self.constrain_tools = constrain_tools  # tool-calling tasks: decode to the tools' JSON schema where possible
        self.parallel_tools = parallel_tools  # ... where a reply may hold several calls (a JSON array)
        self.history, self.constrained = history, constrained
        if selection not in ("generate", "score"):
            raise ValueError(f"agent.action_selection: expected 'generate' or 'score', got {selection!r}")
        if selection == "score" and not isinstance(backend, ScoringBackend):
            raise ValueError(
                f"agent.action_selection=score: the {backend.name} backend cannot score actions "
                "(set models.backend=transformers)"
            )
        self.selection = selection
        self.answer_params = dataclasses.replace(params, max_tokens=answer_max_tokens or params.max_tokens)
        # Which weights produced an episode: the backend's identity (model path, adapter, dtype, seed).
        self.model_id = backend.identity
        self._tool_format: str | None = None

    @property
    def tool_format(self) -> str:
        """How tool-calling prompts are written (r2w/tool_calls.py): by the model's own chat template where the
        backend renders with it and the template supports tools, or the server's own tool API where the backend
        says so (`backend.tool_format`), else r2w's text fallback. Recorded per episode."""
        if self._tool_format is None:
            declared = getattr(self.backend, "tool_format", None)
            native = getattr(self.backend, "native_tools", False)
            if isinstance(declared, str):
                self._tool_format = declared
            else:
                self._tool_format = tool_format(self.backend.tokenizer) if native else TEXT_FALLBACK
        return self._tool_format

    def prompt_for(self, state: EpisodeState) -> list[Message]:
        recent = state.history[-self.history :] if self.history else []
        return build_messages(state.task_text, state.obs.text, state.obs.valid_actions, recent, state.hints_block)

    def act(self, states: list[EpisodeState]) -> list[Decision]:
        prompts = [self.prompt_for(s) for s in states]
        decisions: list[Decision | None] = [None] * len(states)
        acting = [i for i, s in enumerate(states) if s.obs.valid_actions]
        answering = [i for i, s in enumerate(states) if not s.obs.valid_actions]
        draw = draw_key(self.params.seed, self.name, states)
        params_by_group = (
            dataclasses.replace(self.params, draw=draw),
            dataclasses.replace(self.answer_params, draw=draw),
        )
        for group, params in zip((acting, answering), params_by_group, strict=True):
            if not group:
                continue
            free = group is answering
            if self.selection == "score" and not free:
                scored = self._score([states[i] for i in group], [prompts[i] for i in group], draw)
                for i, decision in zip(group, scored, strict=True):
                    decisions[i] = decision
                continue
            choices = [states[i].obs.valid_actions for i in group] if self.constrained and not free else None
            completions = self.backend.generate([prompts[i] for i in group], params, choices=choices)
            for i, c in zip(group, completions, strict=True):
                text = c.texts[0]
                decisions[i] = Decision(
                    action=text.strip() if free else map_to_valid_action(text, states[i].obs.valid_actions),
                    response=text,
                    prompt=prompts[i],
                    prompt_tokens=c.prompt_tokens,
                    completion_tokens=c.completion_tokens[0] if c.completion_tokens else 0,
                )
        return decisions  # type: ignore[return-value]

    def act_chat(self, states: list[ChatState]) -> list[Decision]:
        """One assistant turn per live chat episode, parsed: decoded to the tools' JSON schema where the backend can."""
        native = self.tool_format != TEXT_FALLBACK
        prompts = [build_chat_messages(s.conversation, s.tools, s.hints_block, native) for s in states]
        params = dataclasses.replace(self.answer_params, draw=draw_key(self.params.seed, self.name, states))
        kwargs: dict = {"tools": [s.tools or None for s in states]} if native else {}
        if self.constrain_tools and getattr(self.backend, "constrains_json", False):
            schemas = [json.dumps(reply_schema(s.tools, self.parallel_tools)) if s.tools else None for s in states]
            kwargs["schemas"] = schemas
        completions = self.backend.generate(prompts, params, **kwargs)
        decisions = []
        for state, prompt, c in zip(states, prompts, completions, strict=True):
            parsed = parse_reply(c.texts[0], len(state.steps))
            turn = Message(role="assistant", content=parsed.content, tool_calls=parsed.calls)
            decisions.append(
                Decision(
                    action=render_turn(turn) if not parsed.error else c.texts[0].strip(),
                    response=c.texts[0],
                    prompt=prompt,
                    prompt_tokens=c.prompt_tokens,
                    completion_tokens=c.completion_tokens[0] if c.completion_tokens else 0,
                    turn=turn,
                    malformed=parsed.error,
                )
            )
        return decisions

    def _score(self, states: list[EpisodeState], prompts: list[list[Message]], draw: int) -> list[Decision]:
        """Action selection by likelihood: argmax when greedy, else a draw with p ~ exp(logp / T)."""
        scored = self.backend.score(prompts, [s.obs.valid_actions for s in states])
        rng = random.Random(draw)  # this batch's own draw (see draw_key), wherever it is played
        out = []
        for state, prompt, result in zip(states, prompts, scored, strict=True):
            if self.params.temperature > 0:
                top = max(result.logprobs)
                weights = [math.exp((lp - top) / self.params.temperature) for lp in result.logprobs]
                pick = rng.choices(range(len(weights)), weights=weights)[0]
            else:
                pick = max(range(len(result.logprobs)), key=result.logprobs.__getitem__)
            action = state.obs.valid_actions[pick]
            out.append(
                Decision(
                    action=action,
                    response=action,
                    prompt=prompt,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.choice_tokens[pick],
                )
            )
        return out


def draw_key(seed: int, policy: str, states: list[EpisodeState] | list[ChatState]) -> int:
    """The key of one batched decision's random draws: the run's seed, the policy, the batch's (task, sample)
    jobs and the step. Not a call counter: the same batch samples the same actions whether it is played in
    this process after other batches or alone on a Dask worker (r2w/scaleout.py). In lockstep, every live
    episode of a batch has taken the same number of steps."""
    jobs = [(s.task.task_id, s.sample_index) for s in states]
    step = len(states[0].steps) if states else 0
    return int(content_hash([seed, policy, jobs, step])[:15], 16)


class RandomPolicy:
    """Uniformly random valid action: the baseline every success rate is reported beside.

    Free-text tasks have no action set to sample from: it answers the empty string (chance ~ 0).
    """

    name = "random"
    model_id = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def act(self, states: list[EpisodeState]) -> list[Decision]:
        actions = [self.rng.choice(s.obs.valid_actions) if s.obs.valid_actions else "" for s in states]
        return [Decision(action=a, response=a, prompt=[]) for a in actions]

    def act_chat(self, states: list[ChatState]) -> list[Decision]:
        """The trivial tool baseline: one randomly chosen tool, called with no arguments."""
        out = []
        for state in states:
            names = [t.get("function", t).get("name", "") for t in state.tools]
            calls = [ToolCall(id=f"call_{len(state.steps)}_0", function=ToolFunction(name=self.rng.choice(names)))]
            turn = Message(role="assistant", tool_calls=calls if names else [])
            out.append(Decision(action=render_turn(turn), response=render_turn(turn), prompt=[], turn=turn))
        return out


def map_to_valid_action(text: str, valid_actions: list[str]) -> str:
    """Map free text to the closest valid action (exact, then prefix, then fuzzy ratio)."""
    cleaned = text.strip().splitlines()[0].strip().strip(".").lower() if text.strip() else ""
    if not valid_actions:
        return text.strip()
    if cleaned in valid_actions:
        return cleaned
    for action in valid_actions:
        if cleaned.startswith(action):
            return action
    best = process.extractOne(cleaned, valid_actions, scorer=fuzz.ratio)
    return best[0] if best else valid_actions[0]


HintRetriever = Callable[[str, str, int], list[Hint]]  # (category, query, k) -> hints, e.g. HintStore.retrieve


def agent_policy(cfg: R2WConfig, backend: GenerationBackend, name: str, temperature: float, n: int = 1) -> LLMPolicy:
    """The agent as every stage runs it: same prompt, same action mapping, only sampling differs."""
    params = SamplingParams(
        n=n,
        temperature=temperature,
        top_p=cfg.teach.top_p if temperature > 0 else 1.0,
        max_tokens=cfg.agent.max_new_tokens,
        seed=cfg.runtime.seed,
    )
    return LLMPolicy(
        backend,
        name,
        params,
        history=cfg.agent.history,
        constrained=cfg.agent.constrained,
        answer_max_tokens=cfg.agent.answer_max_new_tokens,
        selection=cfg.agent.action_selection,
        constrain_tools=cfg.agent.constrain_tool_calls,
        parallel_tools=cfg.agent.parallel_tool_calls,
    )


def hint_provider(retrieve: HintRetriever, k: int) -> HintProvider:
    """One-shot retrieval at episode start, keyed by category and the task + first observation."""

    def provide(task: TaskSpec, task_text: str, obs: Observation) -> tuple[list[str], str]:
        hints: list[Hint] = retrieve(task.category, hint_query(task_text, obs.text), k) if k else []
        return [h.hint_id for h in hints], render_hints_block(hints)

    return provide


def hint_query(task_text: str, first_observation: str) -> str:
    return f"{task_text}\n{first_observation}"


@dataclass(frozen=True)
class PrefetchedHints:
    """A HintRetriever that answers from hints retrieved beforehand, keyed by (category, query).

    Why: a batch played on a Dask worker gets its hints from the driver's store (local Chroma or a server)
    through this table, so a worker opens no hint store, and retrieves exactly what the driver would."""

    table: dict[tuple[str, str], list[Hint]]

    def __call__(self, category: str, query: str, k: int) -> list[Hint]:
        if (category, query) not in self.table:
            raise KeyError(f"no hints were prefetched for category {category!r} and the query {query[:80]!r}")
        return self.table[(category, query)][:k]


def prefetch_hints(factory, tasks: list[TaskSpec], retrieve: HintRetriever, k: int) -> PrefetchedHints:
    """Retrieve now what each task's episodes will retrieve at their start: the query is the task and its first
    observation, read by resetting an environment on the task, as the runners do (`start` below)."""
    table: dict[tuple[str, str], list[Hint]] = {}
    env = factory.make()
    try:
        for task in tasks:
            if getattr(factory, "kind", "text") == "chat":
                text = ChatState(task, list(env.reset(task).messages), []).task_text
                query = hint_query(text, text)
            else:
                text, obs = env.reset(task)
                query = hint_query(text, obs.text)
            if (task.category, query) not in table:
                table[(task.category, query)] = retrieve(task.category, query, k) if k else []
    finally:
        env.close()
    return PrefetchedHints(table)


def play(
    cfg: R2WConfig,
    factory: EnvironmentFactory,
    tasks: list[TaskSpec],
    policy: Policy,
    desc: str,
    samples: int = 1,
    retrieve: HintRetriever | None = None,
    batch_size: int | None = None,
) -> list[Episode]:
    """Play every task `samples` times under the config's step budget, batching and agent rules.

    With `retrieve`, each episode gets the top `hints.k` hints in its system prompt (the
    base+hints and teacher policies); without it the episode is hint-free.
    """
    return play_jobs(cfg, factory, jobs_of(tasks, samples), policy, desc, retrieve, batch_size)


def jobs_of(tasks: list[TaskSpec], samples: int = 1) -> list[tuple[TaskSpec, int]]:
    """(task, sample index) in the order episodes are played and stored: each task's samples together."""
    return [(t, i) for t in tasks for i in range(samples)]


def play_jobs(
    cfg: R2WConfig,
    factory: EnvironmentFactory,
    jobs: list[tuple[TaskSpec, int]],
    policy: Policy,
    desc: str,
    retrieve: HintRetriever | None = None,
    batch_size: int | None = None,
) -> list[Episode]:
    """`play` on explicit (task, sample) jobs, in lockstep batches of `batch_size` consecutive jobs (a Dask
    worker plays one such batch: r2w/scaleout.py)."""
    runner = run_chat_episodes if getattr(factory, "kind", "text") == "chat" else run_episodes
    return runner(
        factory,
        jobs,
        policy,
        cfg.env.max_steps,
        batch_size or cfg.agent.batch_size,
        config_hash=cfg.hash,
        desc=desc,
        hints_for=hint_provider(retrieve, cfg.hints.k) if retrieve is not None else None,
        avoid_losing_actions=cfg.agent.avoid_losing_actions,
    )


def run_episodes(
    factory: EnvironmentFactory,
    jobs: list[tuple[TaskSpec, int]],
    policy: Policy,
    max_steps: int,
    batch_size: int = 16,
    config_hash: str = "",
    desc: str = "rollout",
    hints_for: HintProvider | None = None,
    avoid_losing_actions: bool = False,
) -> list[Episode]:
    """Play text-game jobs (task, sample_index) in lockstep batches of live episodes.

    `hints_for` is called once per episode, right after reset (one-shot retrieval at episode
    start), and returns the hint ids and the block to put in the system prompt.
    `avoid_losing_actions` (config `agent.avoid_losing_actions`) drops from the valid actions every
    action that lowered the score earlier in the episode, for every policy alike (random included).
    """

    def start(env: Environment, task: TaskSpec, sample: int) -> EpisodeState:
        text, obs = env.reset(task)
        hint_ids, block = hints_for(task, text, obs) if hints_for else ([], "")
        return EpisodeState(task, text, obs, block, hint_ids, sample)

    def advance(env: Environment, st: EpisodeState, d: Decision) -> bool:
        new = env.step(d.action)
        st.steps.append(
            Step(
                index=len(st.steps),
                observation=st.obs.text,
                valid_actions=st.obs.valid_actions,
                prompt=d.prompt,
                response=d.response,
                action=d.action,
                prompt_tokens=d.prompt_tokens,
                completion_tokens=d.completion_tokens,
                reward=new.reward,
            )
        )
        st.history.append((d.action, new.text))
        if avoid_losing_actions:
            new = without_actions(new, {s.action for s in st.steps if s.reward < 0})
        st.obs = new
        return not new.done

    model = getattr(policy, "model_id", policy.name)
    finish = partial(_to_episode, policy=policy.name, config_hash=config_hash, model=model)
    return _lockstep(factory, jobs, batch_size, max_steps, desc, start, policy.act, advance, finish)


def run_chat_episodes(
    factory: ChatEnvironmentFactory,
    jobs: list[tuple[TaskSpec, int]],
    policy: Policy,
    max_steps: int,
    batch_size: int = 16,
    config_hash: str = "",
    desc: str = "rollout",
    hints_for: HintProvider | None = None,
    avoid_losing_actions: bool = False,
) -> list[Episode]:
    """Tool-calling tasks in lockstep batches: each round, every live episode gets one assistant turn and
    the environment answers it (tool results or a user message) until its verifier says done or
    `max_steps` turns have passed. `avoid_losing_actions` has no meaning here (no action set)."""

    def start(env: ChatEnvironment, task: TaskSpec, sample: int) -> ChatState:
        opened = env.reset(task)
        state = ChatState(task, list(opened.messages), list(opened.tools), sample_index=sample)
        if hints_for:
            state.hint_ids, state.hints_block = hints_for(task, state.task_text, Observation(state.task_text, []))
        return state

    def advance(env: ChatEnvironment, st: ChatState, d: Decision) -> bool:
        turn = d.turn or Message(role="assistant", content=d.response)
        result = env.step(turn)
        st.steps.append(
            Step(
                index=len(st.steps),
                observation=st.conversation[-1].content if st.conversation else "",
                prompt=d.prompt,
                response=d.response,
                action=d.action,
                prompt_tokens=d.prompt_tokens,
                completion_tokens=d.completion_tokens,
                reward=result.score if result.done else 0.0,
                tool_calls=turn.tool_calls,
                tool_results=result.messages,
                malformed_tool_call=d.malformed,
            )
        )
        st.conversation += [turn, *result.messages]
        st.result = result
        return not result.done

    model = getattr(policy, "model_id", policy.name)
    fmt = getattr(policy, "tool_format", TEXT_FALLBACK)  # a policy without one (scripted, random): the fallback
    finish = partial(_chat_episode, policy=policy.name, config_hash=config_hash, model=model, tool_format=fmt)
    return _lockstep(factory, jobs, batch_size, max_steps, desc, start, policy.act_chat, advance, finish)


def _lockstep(
    factory, jobs, batch_size: int, max_steps: int, desc: str, start, decide, advance, finish
) -> list[Episode]:
    """The shared driver: up to `batch_size` live environments, one batched decision per step for all
    live episodes, until each is done or `max_steps` steps have passed; environments are always closed."""
    episodes: list[Episode] = []
    envs = [factory.make() for _ in range(min(batch_size, len(jobs)))]
    bar = tqdm(total=len(jobs), desc=desc, unit="ep", leave=False)
    try:
        for first in range(0, len(jobs), len(envs) or 1):
            states = [
                start(env, task, sample)
                for env, (task, sample) in zip(envs, jobs[first : first + len(envs)], strict=False)
            ]
            live = list(range(len(states)))
            for _ in range(max_steps):
                if not live:
                    break
                decisions = decide([states[i] for i in live])
                live = [i for i, d in zip(live, decisions, strict=True) if advance(envs[i], states[i], d)]
            for st in states:
                episodes.append(finish(st))
                bar.update()
                bar.set_postfix(success=f"{sum(e.success for e in episodes)}/{len(episodes)}")
    finally:
        bar.close()
        for env in envs:
            env.close()
    return episodes


def _chat_episode(st: ChatState, policy: str, config_hash: str, model: str, tool_format: str = "") -> Episode:
    result = st.result
    return _episode(st.task, st.task_text, st.steps, (result.success, result.done, result.score), st.hint_ids,
                    st.sample_index, st.started, policy, config_hash, model, tools=st.tools, tool_format=tool_format,
                    verdict_by=result.verdict_by or f"environment:{st.task.env}")  # fmt: skip


def without_actions(obs: Observation, banned: set[str]) -> Observation:
    """The observation with `banned` actions removed from its valid actions, unless none would remain."""
    kept = [a for a in obs.valid_actions if a not in banned]
    if not banned or not kept or len(kept) == len(obs.valid_actions):
        return obs
    return dataclasses.replace(obs, valid_actions=kept)


def _to_episode(st: EpisodeState, policy: str, config_hash: str, model: str = "") -> Episode:
    outcome = (st.obs.success, st.obs.done, st.obs.score)
    return _episode(st.task, st.task_text, st.steps, outcome, st.hint_ids, st.sample_index, st.started,
                    policy, config_hash, model)  # fmt: skip


def _episode(
    task: TaskSpec,
    task_text: str,
    steps: list[Step],
    outcome: tuple[bool, bool, float],
    hint_ids: list[str],
    sample_index: int,
    started: float,
    policy: str,
    config_hash: str,
    model: str,
    **extra,
) -> Episode:
    """The stored episode; its id is a content hash of what makes it this attempt (task, policy, sample,
    hints, actions, config)."""
    success, done, score = outcome
    identity = {"task": task.task_id, "policy": policy, "sample": sample_index, "hints": hint_ids,
                "actions": [s.action for s in steps], "cfg": config_hash}  # fmt: skip
    return Episode(
        episode_id="e-" + content_hash(identity)[:16],
        env=task.env,
        category=task.category,
        task_id=task.task_id,
        split=task.split,
        seed=task.seed,
        task=task_text,
        steps=steps,
        success=success,
        score=score,
        outcome="success" if success else ("failure" if done else "step limit"),
        policy=policy,
        model=model,
        hint_ids=hint_ids,
        sample_index=sample_index,
        config_hash=config_hash,
        wall_time_s=round(time.perf_counter() - started, 3),
        **extra,
    )
