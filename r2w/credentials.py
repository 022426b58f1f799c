"""API keys for hosted servers (teacher, extractor, judge): read from an environment variable whose NAME is configured.

A key never enters a config, so it never reaches the config hash, MLflow params, datasets or logs.
The config field holds only the variable's name, checked to look like one: a pasted key (mixed case,
dashes) is refused without echoing it. Error texts from servers are passed through `redact` before
they are raised, because some servers quote the key they rejected.
"""

from __future__ import annotations

import os
import re

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


class CredentialError(ValueError):
    pass


def check_env_name(field: str, name: str | None) -> str | None:
    """Accept an UPPER_SNAKE environment variable name; refuse anything else without quoting it."""
    if name is None or ENV_NAME.fullmatch(name):
        return name
    raise CredentialError(
        f"{field}: expected the NAME of an environment variable holding the key (e.g. OPENAI_API_KEY: "
        "upper case, digits and _), not the key itself; the value given is not shown"
    )


def api_key(field: str, name: str | None) -> str | None:
    """The key in the environment variable `name` (None when no variable is configured)."""
    if name is None:
        return None
    check_env_name(field, name)
    value = os.environ.get(name, "")
    if not value.strip():
        raise CredentialError(f"{field}: environment variable {name} is not set (or empty); export it before the run")
    return value.strip()


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every given secret replaced, so server error texts can be raised and logged."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text
