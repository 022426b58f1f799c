"""Scrub personal data and secrets from episodes before anything stores them.

Failure traces come from production agents: they can hold users' emails, phone numbers and
pasted credentials. Everything downstream (the failures dataset, the extractor's prompts and
DSPy cache, hints in Chroma, training data, MLflow dataset inputs) is built from the scrubbed
episode, so scrubbing once at collect time covers every store. Each match becomes a
placeholder naming its kind (`[EMAIL]`), so a hint can still say "WHEN the user gives an email".
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from r2w.contracts import Episode, map_strings

if TYPE_CHECKING:  # the config imports this module (errors quote values scrubbed): no import back at runtime
    from r2w.config import PrivacyConfig

R = TypeVar("R", bound=BaseModel)

# Order matters: specific token formats before the generic long-secret rules, emails before phones.
BUILTIN_PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "bearer": r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}",
    "api_key": (
        r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}"
        r"|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{20,})"
    ),
    "credential": r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|token)\s*[:=]\s*[^\s,;\"']{6,}",
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    "phone": r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)",
    "hex_secret": r"\b[0-9a-fA-F]{32,}\b",
    "base64_secret": r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*\d)(?=[A-Za-z0-9+/]*[A-Z])[A-Za-z0-9+/]{40,}={0,2}",
}


@dataclass
class Scrubber:
    """Regex scrubbing with per-kind counts; built-in kinds plus `privacy.patterns` from the config."""

    patterns: dict[str, re.Pattern] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    @classmethod
    def from_config(cls, cfg: PrivacyConfig | None = None) -> Scrubber:
        """Built-in kinds plus the config's patterns; no config means the built-in kinds (the default)."""
        table = dict(BUILTIN_PATTERNS) if cfg is None or cfg.scrub else {}
        if cfg is not None and cfg.scrub:
            table.update(cfg.patterns)
        return cls({name: re.compile(p) for name, p in table.items()})

    def text(self, value: str) -> str:
        """The text with every match replaced by `[KIND]`; counts what it replaced."""
        for name, pattern in self.patterns.items():
            value, n = pattern.subn(f"[{name.upper()}]", value)
            if n:
                self.counts[name] += n
        return value

    def kinds_in(self, value: str) -> list[str]:
        """Which kinds of private data `value` contains (no counting, no rewriting)."""
        return [name for name, pattern in self.patterns.items() if pattern.search(value)]

    def episode(self, episode: Episode) -> Episode:
        """A copy of the episode with every string scrubbed, found by walking the contract.

        Why every string: a field left out of a hand-written list (category, task_id, a step's
        prompt) once reached the failures dataset and the extractor raw. Identity fields (`*_id`,
        `*_ids`) stay unique: when scrubbing changes one, a short hash of the original is appended,
        so two ids that differed only in a secret do not collapse into one.
        """
        if not self.patterns:
            return episode
        return map_strings(episode, self._field)

    def record(self, record: R) -> R:
        """Any contract record with every string scrubbed (see `episode`)."""
        return map_strings(record, self._field) if self.patterns else record

    def _field(self, path: str, value: str) -> str:
        out = self.text(value)
        if out != value and _is_identity(path):
            out = f"{out}~{hashlib.sha256(value.encode()).hexdigest()[:10]}"
        return out

    def episodes(self, episodes: list[Episode]) -> list[Episode]:
        return [self.episode(e) for e in episodes]


def scrub_episodes(episodes: list[Episode], cfg: PrivacyConfig | None = None) -> tuple[list[Episode], dict[str, int]]:
    """Scrubbed copies of `episodes` and how many matches of each kind were replaced."""
    scrubber = Scrubber.from_config(cfg)
    return scrubber.episodes(episodes), dict(scrubber.counts)


def scrub_text(text: str, cfg: PrivacyConfig | None = None) -> str:
    """`text` with private data replaced: for error messages, tags and logs that quote input values.

    Built-in kinds are always scrubbed here, even with `privacy.scrub: false`: an error message is
    never the place a person wants a raw credential.
    """
    scrubber = Scrubber.from_config(cfg if cfg is None or cfg.scrub else None)
    return scrubber.text(text)


def _is_identity(path: str) -> bool:
    """A field that identifies a record (`episode_id`, `task_id`, `hint_ids[3]`): by naming convention."""
    leaf = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
    return leaf.endswith(("_id", "_ids"))


def loggable_config(cfg) -> dict:
    """The config as logged to MLflow params: canary secrets replaced by a short hash.

    A canary is only useful while it appears nowhere but in the traces it was planted in.
    """
    dumped = cfg.model_dump(mode="json")
    dumped["privacy"]["canaries"] = [
        {"prefix": c["prefix"], "secret_sha256": hashlib.sha256(c["secret"].encode()).hexdigest()[:12]}
        for c in dumped["privacy"]["canaries"]
    ]
    return dumped
