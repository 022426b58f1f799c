"""The hint memory's history: content-hashed snapshots and an append-only audit log.

- A snapshot is the whole store (every hint, active or disabled) as a content-hashed dataset
  (r2w/datasets.py, kind `hint-snapshots`, one `HintSnapshotRow` per hint with its exact JSON).
  Its id is the first 16 hex digits of the content hash (the dataset's folder name), so two
  stores holding the same hints have the same snapshot id, and a snapshot once written is never
  changed. An empty store's snapshot id is "empty".
- The audit log is a JSONL file beside the store (<data_dir>/hints/<collection>.audit.jsonl):
  one line per change to one hint (who, when, why, the text before and after) and one per new
  snapshot head. Lines are only ever appended, under a file lock and fsync'd before the lock is
  released, so a crash loses at most the change being written, never an earlier line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from r2w.contracts import Hint, HintSnapshotRow, content_hash, utcnow
from r2w.datasets import DatasetRef, load_records, save_records
from r2w.locks import file_lock

SNAPSHOT_KIND = "hint-snapshots"
EMPTY = "empty"
ID_CHARS = 16


def snapshot_rows(hints: list[Hint]) -> list[HintSnapshotRow]:
    """Rows in the store's list order (category, created_at, id): the order export_jsonl writes."""
    ordered = sorted(hints, key=lambda h: (h.category, h.created_at, h.hint_id))
    return [
        HintSnapshotRow(
            hint_id=h.hint_id,
            category=h.category,
            status=h.status,
            applicability=h.applicability,
            text=h.text,
            hint_json=h.model_dump_json(),
        )
        for h in ordered
    ]


def snapshot_key(rows: list[HintSnapshotRow]) -> str:
    """The snapshot id of these rows (== the id save_records gives their dataset)."""
    if not rows:
        return EMPTY
    return content_hash([r.model_dump(mode="json") for r in rows])[:ID_CHARS]


def snapshot_dir(root: str | Path, snapshot_id: str) -> Path:
    return Path(root) / SNAPSHOT_KIND / snapshot_id


def save_snapshot(rows: list[HintSnapshotRow], root: str | Path, meta: dict | None = None) -> DatasetRef | None:
    """Store the rows (idempotent); None for an empty store."""
    if not rows:
        return None
    return save_records(rows, root, SNAPSHOT_KIND, meta)


def resolve_snapshot(root: str | Path, snapshot_id: str) -> str:
    """A full snapshot id from an id or a unique prefix of at least 6 characters ("empty" stays)."""
    if snapshot_id == EMPTY:
        return EMPTY
    folder = Path(root) / SNAPSHOT_KIND
    if len(snapshot_id) < 6:
        raise KeyError(f"snapshot id {snapshot_id!r}: give at least 6 characters")
    found = sorted(p.name for p in folder.glob(f"{snapshot_id}*") if (p / "manifest.json").is_file())
    if len(found) != 1:
        what = "no stored snapshot" if not found else f"{len(found)} snapshots match"
        raise KeyError(f"{what} {snapshot_id!r} under {folder}")
    return found[0]


def load_snapshot(root: str | Path, snapshot_id: str) -> list[Hint]:
    """The hints of a stored snapshot, in list order; the content hash is verified on read."""
    full = resolve_snapshot(root, snapshot_id)
    if full == EMPTY:
        return []
    rows = load_records(snapshot_dir(root, full), HintSnapshotRow)
    return [Hint.model_validate_json(r.hint_json) for r in rows]


def diff_hints(before: list[Hint], after: list[Hint]) -> list[dict[str, Any]]:
    """Per-hint differences: added, removed, or changed fields (old -> new), ordered by hint id."""
    a = {h.hint_id: h for h in before}
    b = {h.hint_id: h for h in after}
    out: list[dict[str, Any]] = []
    for hint_id in sorted(a.keys() | b.keys()):
        old, new = a.get(hint_id), b.get(hint_id)
        if old is None:
            out.append({"hint_id": hint_id, "change": "added", "category": new.category, "rule": _rule(new)})
        elif new is None:
            out.append({"hint_id": hint_id, "change": "removed", "category": old.category, "rule": _rule(old)})
        elif old != new:
            fields = {
                name: (getattr(old, name), getattr(new, name))
                for name in ("status", "applicability", "text", "support")
                if getattr(old, name) != getattr(new, name)
            }
            if not fields:
                fields = {"provenance": ("...", "...")}  # only evidence or timestamps moved
            out.append({"hint_id": hint_id, "change": "changed", "category": new.category, "fields": fields})
    return out


def _rule(hint: Hint) -> str:
    return f"[{hint.status}] {hint.applicability}: {hint.text}"


def change_entry(
    action: str, by: str, reason: str, new: Hint | None, previous: Hint | None, **extra: Any
) -> dict[str, Any]:
    """One audit line for one hint: who, why, and its rule before and after (None: not stored)."""
    hint = new or previous
    return {
        "action": action,
        "by": by,
        "reason": reason,
        "hint_id": hint.hint_id if hint else None,
        "category": hint.category if hint else None,
        "previous_text": previous.text if previous else None,
        "previous_applicability": previous.applicability if previous else None,
        "previous_status": previous.status if previous else None,
        "text": new.text if new else None,
        "applicability": new.applicability if new else None,
        "status": new.status if new else None,
        **extra,
    }


class AuditLog:
    """Append-only JSONL: every line has `at`; appends are locked and fsync'd."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = self.path.with_name(self.path.name + ".lock")
        self._head = self.path.with_name(self.path.name + ".head")

    def append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        at = utcnow().isoformat()
        blob = "".join(json.dumps({"at": at, **e}, default=str) + "\n" for e in entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock):
            self._write(blob)

    def _write(self, blob: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, blob.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def record_head(self, snapshot_id: str, entry: dict[str, Any]) -> bool:
        """Log a `snapshot` line when the store's content moved to `snapshot_id`; False if it is the head."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock):
            try:
                head = self._head.read_text()
            except OSError:
                head = ""
            if head == snapshot_id:
                return False
            self._write(json.dumps({"at": utcnow().isoformat(), **entry}, default=str) + "\n")
            tmp = self._head.with_name(f".{self._head.name}.{os.getpid()}.tmp")
            tmp.write_text(snapshot_id)
            tmp.replace(self._head)
            return True

    def read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]
