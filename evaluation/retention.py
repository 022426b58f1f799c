"""Forgetting measures that work even when accuracy sits at the floor for a small model.

- KL(base || student) of next-token distributions on fixed general prompts shipped in the repo.
- Mean log-likelihood of the gold action on game types the training never touched
  (a drop means the student got worse at something it was not trained on).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from evaluation.environments import EnvironmentFactory
from prompts.agent import build_messages
from r2w.contracts import Message


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
                if action not in obs.valid_actions:
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
