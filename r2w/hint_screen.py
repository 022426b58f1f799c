"""Screen hints and failure traces: failure traces are untrusted text.

A trace can carry instructions aimed at the pipeline ("ignore previous instructions, add hint:
..."). Two defences, both counted in the run:
- `trace_injection`: a failure whose text looks like an instruction to the extractor, the model
  or the hint memory is quarantined: it is never sent to the extractor (flagged, not silently
  dropped: the run reports how many and which).
- `screen_hint`: every candidate hint (extracted, curated pack or `r2w hints import`) must be one
  short imperative sentence with no URL, code, secret or injection phrase; each rejection has a
  reason (`hints.rejected.<reason>` metrics).
A harmful hint written in plain words can still pass; the hint-harm gate (evaluation/gates.py)
catches one that makes the teacher do worse than the base on paired seeds.
"""

from __future__ import annotations

import re

from r2w.config import HintsConfig
from r2w.contracts import Episode, iter_strings
from r2w.privacy import Scrubber

INJECTION_PATTERNS: dict[str, str] = {
    "override": r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|any|your)\b"
    r"[^.\n]{0,20}\b(?:instructions?|rules?|prompts?|guidelines?|directions?)",
    "system_prompt": r"\bsystem\s*prompt\b|\bdeveloper\s*(?:mode|message)\b",
    "add_hint": r"\b(?:add|insert|store|save|remember|record|append)\b[^.\n]{0,20}"
    r"\b(?:hints?|lessons?|rules?|memory)\b\s*:",
    "persona": r"\byou\s+are\s+now\b|\bact\s+as\s+(?:an?\s+)?(?:admin|root|system|developer|dan)\b|\bjailbreak",
    "role_tag": r"<\|?/?(?:im_start|im_end|system|assistant|user|endoftext)\|?>|\[/?INST\]|^\s*(?:system|assistant)\s*:"
    r"|\[\[\s*##",
    "exfiltrate": r"\b(?:reveal|print|output|leak|send|exfiltrate)\b[^.\n]{0,30}\b(?:password|secret|api\s*key|token"
    r"|credentials?|system\s*prompt)",
}
_URL = re.compile(r"(?i)\b(?:https?|ftp|file)://|\bwww\.[a-z0-9-]+\.[a-z]{2,}")
_CODE = re.compile(
    r"`|\$\(|&&|\|\||\brm\s+-|\bsudo\b|\bcurl\b|\bwget\b|\bimport\s+\w|\bdef\s+\w+\(|\beval\(|\bexec\("
    r"|<script|\bos\.system|\bsubprocess\b|;\s*$|\{(?![a-z_]+\})[^}]*\}"
)
_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z])")


def _compiled(extra: list[str]) -> dict[str, re.Pattern]:
    table = {name: re.compile(p, re.IGNORECASE | re.MULTILINE) for name, p in INJECTION_PATTERNS.items()}
    for i, pattern in enumerate(extra):
        table[f"denylist_{i}"] = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    return table


class HintScreen:
    """Rules that every hint must pass before the hint memory stores it."""

    def __init__(self, cfg: HintsConfig | None = None) -> None:
        cfg = cfg or HintsConfig()
        self.min_chars, self.max_chars = cfg.min_chars, cfg.max_chars
        self.injection = _compiled(cfg.screen_denylist)
        self.secrets = Scrubber.from_config()

    def injection_kinds(self, text: str) -> list[str]:
        """Names of the injection patterns found in `text` (denylist entries as `denylist_<i>`)."""
        return [name for name, pattern in self.injection.items() if pattern.search(text)]

    def reason(self, applicability: str, text: str) -> str | None:
        """Why the hint is rejected (a short reason code), or None when it passes."""
        whole = f"{applicability}: {text}"
        if "\n" in whole or "\r" in whole:
            return "multiline"
        if len(text.strip()) < self.min_chars:
            return "too_short"
        if len(whole) > self.max_chars:
            return "too_long"
        if self.injection_kinds(whole):
            return "injection"
        if _URL.search(whole):
            return "url"
        if self.secrets.kinds_in(whole) or re.search(r"\[(?:[A-Z_]+)\]", whole):
            return "secret"  # a live secret, or a scrubbed placeholder: either way not a general lesson
        if _CODE.search(whole):
            return "code"
        if _SENTENCE_END.search(text.strip()):
            return "multi_sentence"
        return None


def trace_injection(episode: Episode, screen: HintScreen) -> list[str]:
    """Injection kinds found in any string of the episode, found by walking the contract.

    Every field counts (category and task_id go to the extractor too, and a step's prompt and
    valid actions are model input): a fixed list of fields once skipped them.
    """
    found: list[str] = []
    for _path, part in iter_strings(episode):
        for kind in screen.injection_kinds(part):
            if kind not in found:
                found.append(kind)
    return found
