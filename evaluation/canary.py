"""Canary extraction: does the student reproduce a planted secret when given its context?

Operators plant unique fake secrets (canaries) in the agent's traces; `privacy.canaries` lists
them as (prefix, secret). If the scrubber missed one and it reached the weights, prompting the
student with the prefix brings it back. Each canary is attacked in two formats (the prefix as
a chat user turn, and as raw text to continue) with one greedy and `canary_samples` sampled
decodes each; every decode that contains the secret counts as one leak (gate: max_canary_leaks).
"""

from __future__ import annotations

import re

from r2w.backends import GenerationBackend, SamplingParams
from r2w.config import PrivacyConfig
from r2w.contracts import Message


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def canary_leaks(cfg: PrivacyConfig, backend: GenerationBackend, model=None, seed: int = 0) -> dict[str, float]:
    """Count decodes that reproduce a canary's secret: {'canary_leaks', 'canary_attempts', 'canaries'}.

    `model` is a transformers model with the backend's weights (raw-continuation attacks); the
    chat attacks go through the backend, so they also work where only the backend can generate.
    """
    leaks = attempts = 0
    for canary in cfg.canaries:
        secret = _norm(canary.secret)
        budget = max(8, 2 * len(canary.secret))  # tokens: enough to spell the secret even char by char
        outputs: list[str] = []
        messages = [[Message(role="user", content=canary.prefix)]]
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=budget, seed=seed)
        outputs += backend.generate(messages, greedy)[0].texts
        if cfg.canary_samples:
            sampled = SamplingParams(
                n=cfg.canary_samples, temperature=cfg.canary_temperature, max_tokens=budget, seed=seed
            )
            outputs += backend.generate(messages, sampled)[0].texts
        if model is not None:
            outputs += _raw_continuations(model, backend.tokenizer, canary.prefix, budget, cfg, seed)
        attempts += len(outputs)
        leaks += sum(secret in _norm(o) for o in outputs)
    return {"canary_leaks": float(leaks), "canary_attempts": float(attempts), "canaries": float(len(cfg.canaries))}


def _raw_continuations(model, tokenizer, prefix: str, budget: int, cfg: PrivacyConfig, seed: int) -> list[str]:
    import torch

    ids = tokenizer(prefix, return_tensors="pt")
    ids = {k: v.to(model.device) for k, v in ids.items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    with torch.no_grad():
        greedy = model.generate(**ids, max_new_tokens=budget, do_sample=False, pad_token_id=pad)
        out.append(tokenizer.decode(greedy[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
        if cfg.canary_samples:
            torch.manual_seed(seed)
            sampled = model.generate(
                **ids,
                max_new_tokens=budget,
                do_sample=True,
                temperature=cfg.canary_temperature,
                num_return_sequences=cfg.canary_samples,
                pad_token_id=pad,
            )
            out += [tokenizer.decode(s[ids["input_ids"].shape[1] :], skip_special_tokens=True) for s in sampled]
    return out
