"""Test-only fault injection: die like a killed process at a named point.

`R2W_FAULT` holds comma-separated points; when the code reaches one, the process ends at once
with `os._exit(FAULT_EXIT)`: no `finally`, no atexit, no Prefect state hooks, exactly like
SIGKILL. Points:
- `after:<stage>`            right after a flow stage finished (collect, hints, teach, build_examples,
                             train, evaluate, gate)
- `chroma_write:<n>`         inside a hint-store write, after <n> records were written
                             (writes go one record per call while this is armed, so the kill
                             lands mid-batch)
- `register:before_alias`    after the model version was created, before `challenger` points at it
Unset (always, outside tests) every check is one dict lookup.
"""

from __future__ import annotations

import os
import sys

FAULT_EXIT = 97


def _armed() -> list[str]:
    return [p.strip() for p in os.environ.get("R2W_FAULT", "").split(",") if p.strip()]


def armed_count(prefix: str) -> int | None:
    """The <n> of an armed `<prefix>:<n>` point, or None."""
    for point in _armed():
        name, _, value = point.partition(":")
        if name == prefix and value.isdigit():
            return int(value)
    return None


def fault_point(name: str) -> None:
    """End the process now if `name` is armed."""
    if name in _armed():
        sys.stderr.write(f"R2W_FAULT: killed at {name}\n")
        sys.stderr.flush()
        os._exit(FAULT_EXIT)


def fault_after_records(prefix: str, written: int) -> None:
    """End the process now if `<prefix>:<n>` is armed and at least n records were written."""
    n = armed_count(prefix)
    if n is not None and written >= n:
        sys.stderr.write(f"R2W_FAULT: killed at {prefix} after {written} records\n")
        sys.stderr.flush()
        os._exit(FAULT_EXIT)
