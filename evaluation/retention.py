"""Forgetting measures that work even when accuracy sits at the floor for a small model.

- KL(base || student) of next-token distributions on fixed general prompts shipped in the repo.
- Mean log-likelihood of the gold action on game types the training never touched
  (a drop means the student got worse at something it was not trained on), and of the
  reference answer on reasoning-gym families the training never touched.
- Success, hint-free, of base and student on whole environments the training never touched
  (`evaluate.retention_envs`: any environment the seam runs), on the same test tasks.
- Perplexity drift on general English prose available offline: by default the paragraphs of
  Jules and Michel Verne's "In the Year 2889" (Project Gutenberg eBook #19362, public domain),
  which reasoning-gym ships as `reasoning_gym/data/in_the_year_2889.txt` for its text tasks.
  (Families such as letter_counting quote sentences from it: do not train on those and read
  the drift as "general text".)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from evaluation.environments import EnvironmentFactory, make_environment
from evaluation.metrics import score_episodes
from r2w.agent_prompt import build_messages
from r2w.config import R2WConfig
from r2w.contracts import BASE, STUDENT, Message, PolicyScore
from r2w.rollout import agent_policy, play


@torch.inference_mode()
def mean_kl(base_model, student_model, tokenizer, texts: list[str]) -> float:
    """Token-averaged KL(base || student) over the given texts."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        p_log = F.log_softmax(base_model(input_ids=ids).logits.float(), dim=-1)
        q_log = F.log_softmax(student_model(input_ids=ids).logits.float(), dim=-1)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # [1, T]
        total += kl.sum().item()
        count += kl.numel()
    return total / max(count, 1)


def load_general_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_absolute():
        path = Path(__file__).resolve().parent.parent / path
    lines = [ln.strip().replace("\\n", "\n") for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def load_general_passages(source: str, n: int, min_chars: int = 200) -> list[str]:
    """The first n prose paragraphs (>= min_chars) of a text: `reasoning_gym:<file>` or a path.

    A Project Gutenberg header/footer is cut at its `*** START OF` / `*** END OF` lines, and
    the paragraph's hard line breaks are joined, so every passage is running English prose.
    """
    if source.startswith("reasoning_gym:"):
        from reasoning_gym.data import get_data_file_path

        path = Path(str(get_data_file_path(source.split(":", 1)[1])))
    else:
        path = Path(source)
        if not path.is_absolute():
            path = Path(__file__).resolve().parent.parent / path
    if not path.is_file():
        raise ValueError(f"evaluate.general_text: {source!r} -> {path} is not a file")
    text = path.read_text(encoding="utf-8")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start >= 0:
        text = text[text.find("\n", start) + 1 : end if end > start else None]
    paragraphs = [" ".join(block.split()) for block in text.split("\n\n")]
    passages = [p for p in paragraphs if len(p) >= min_chars and not p.startswith("[")]
    if len(passages) < n:
        raise ValueError(
            f"evaluate.general_passages: {source!r} has {len(passages)} paragraphs of >= {min_chars} chars, "
            f"asked for {n}"
        )
    return passages[:n]


@torch.inference_mode()
def mean_nll(model, tokenizer, texts: list[str], max_tokens: int) -> float:
    """Token-averaged negative log-likelihood (nats) of each text's first max_tokens tokens."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :max_tokens]
        if ids.shape[1] < 2:
            continue
        logp = F.log_softmax(model(input_ids=ids).logits.float()[0, :-1], dim=-1)
        token_lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
        total -= token_lp.sum().item()
        count += token_lp.numel()
    if not count:
        raise ValueError("perplexity: no passage has 2 or more tokens")
    return total / count


def collect_gold_decisions(
    factory: EnvironmentFactory, n_tasks: int, history: int = 3
) -> list[tuple[list[Message], str]]:
    """(prompt, gold action) pairs from playing the benchmark's gold path on held-out test seeds."""
    pairs: list[tuple[list[Message], str]] = []
    env = factory.make()
    try:
        for task in factory.tasks("test", n_tasks):
            text, obs = env.reset(task)
            past: list[tuple[str, str]] = []
            for action in env.gold_actions():
                if obs.valid_actions and action not in obs.valid_actions:  # free-text tasks list none
                    break
                recent = past[-history:] if history else []
                pairs.append((build_messages(text, obs.text, obs.valid_actions, recent), action))
                new = env.step(action)
                past.append((action, new.text))
                obs = new
                if new.done:
                    break
    finally:
        env.close()
    return pairs


@torch.inference_mode()
def mean_action_loglik(model, tokenizer, pairs: list[tuple[list[Message], str]], eos: str = "<|im_end|>") -> float:
    """Mean per-token log-likelihood of the gold action (+ end of turn) given the agent prompt."""
    total, count = 0.0, 0
    for messages, action in pairs:
        prompt = tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(action + eos, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        logp = F.log_softmax(model(input_ids=ids).logits.float()[0, :-1], dim=-1)
        targets = ids[0, 1:]
        token_lp = logp.gather(-1, targets[:, None])[:, 0][len(p_ids) - 1 :]
        total += token_lp.sum().item()
        count += token_lp.numel()
    return total / max(count, 1)


def play_retention_suites(cfg: R2WConfig, base_backend, student_backend) -> list[PolicyScore]:
    """Base and student, greedy and hint-free, on each `evaluate.retention_envs` suite's same test tasks.

    The agent is the one every stage runs (rollout.agent_policy); each suite keeps its own step budget.
    """
    scores = []
    for env_cfg in cfg.evaluate.retention_envs:
        try:
            factory = make_environment(env_cfg)
        except ValueError as exc:  # name the field the user wrote
            raise ValueError(f"evaluate.retention_envs: {env_cfg.suite}: {exc}") from None
        tasks = factory.tasks("test", env_cfg.tasks)
        suite_cfg = cfg.model_copy(update={"env": env_cfg})
        for name, backend in ((BASE, base_backend), (STUDENT, student_backend)):
            policy = agent_policy(cfg, backend, name, temperature=0.0)
            episodes = play(suite_cfg, factory, tasks, policy, f"retention {env_cfg.suite} {name}")
            scores.append(score_episodes(name, episodes).model_copy(update={"suite": env_cfg.suite}))
    return scores


def suite_metrics(scores: list[PolicyScore]) -> dict[str, float]:
    """Per suite: each policy's success and n, and the base-minus-student drop the gate checks."""
    out: dict[str, float] = {}
    for s in scores:
        out |= {f"success_{s.policy}:{s.suite}": s.rate, f"n_{s.policy}:{s.suite}": float(s.n)}
    for suite in dict.fromkeys(s.suite for s in scores):
        out[f"success_drop:{suite}"] = out[f"success_{BASE}:{suite}"] - out[f"success_{STUDENT}:{suite}"]
    return out
