"""Content-addressed, versioned datasets of contract records (Parquet via HF `datasets`).

A dataset lives at <root>/<kind>/<hash>/ with data.parquet and manifest.json. It is written to
a temp folder and renamed into place, so a crash never leaves a half-written version, and an
identical dataset is never written twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from r2w import contracts
from r2w.contracts import Record, content_hash, record_content, utcnow

R = TypeVar("R", bound=Record)

# How a dataset's content hash is computed, recorded in its manifest. 1 (manifests without the key): the full
# JSON of every record; 2: without volatile fields (when a record was made, how long it took: Record's
# VOLATILE_FIELDS), so the same records played twice, or sharded over workers, store as one version.
HASH_SCHEME = 2


def _payload(records: list[Record], scheme: int) -> list[dict]:
    return [record_content(r) if scheme >= 2 else r.model_dump(mode="json") for r in records]


class DatasetRef(BaseModel):
    """A pointer to one stored dataset version: enough to find, verify and cite it."""

    kind: str
    hash: str
    path: str
    rows: int

    @property
    def short(self) -> str:
        return self.hash[:12]


def _rows(records: list[Record]) -> list[dict]:
    # Nested lists of models are stored as JSON strings: Parquet schemas of deeply nested,
    # sometimes-empty lists are brittle, and a JSON column stays readable with any tool.
    return [{"id": _record_id(r), "json": r.model_dump_json()} for r in records]


def _record_id(record: Record) -> str:
    for field in ("episode_id", "hint_id", "trajectory_id", "example_id"):
        if hasattr(record, field):
            return str(getattr(record, field))
    return content_hash(record.model_dump(mode="json"))[:16]


def save_records(records: list[R], root: str | Path, kind: str, meta: dict | None = None) -> DatasetRef:
    """Store records as a new dataset version (idempotent: same content, same folder)."""
    from datasets import Dataset

    digest = content_hash(_payload(records, HASH_SCHEME))
    final = Path(root) / kind / digest[:16]
    ref = DatasetRef(kind=kind, hash=digest, path=str(final), rows=len(records))
    if (final / "manifest.json").is_file():
        if verify_dataset(ref) is None:
            return ref
        discard_dataset(final)  # a damaged copy of this content: never trusted, rewritten below
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:8]}-", dir=final.parent))
    try:
        rows = _rows(records)
        table = Dataset.from_list(rows) if rows else Dataset.from_dict({"id": [], "json": []})
        table.to_parquet(str(tmp / "data.parquet"))
        manifest = {
            "kind": kind,
            "hash": digest,
            "rows": len(records),
            "record_type": type(records[0]).__name__ if records else None,
            "hash_scheme": HASH_SCHEME,
            "created_at": utcnow().isoformat(),
            "meta": meta or {},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        try:
            os.rename(tmp, final)
        except OSError:  # another writer stored the same content first
            if verify_dataset(ref) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ref


def verify_dataset(ref: DatasetRef | str | Path) -> str | None:
    """Why a stored dataset version cannot be trusted (missing, unreadable, content hash mismatch), or None.

    Cached stage results and idempotent writes name datasets by path and hash; a folder that was deleted,
    moved away or damaged since must be recomputed, never read (issue 21: a rerun after the data dir was
    deleted failed with FileNotFoundError on a cached result's manifest).
    """
    path = Path(ref.path if isinstance(ref, DatasetRef) else ref)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        expected = manifest["hash"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{path}: no readable manifest ({type(exc).__name__})"
    if isinstance(ref, DatasetRef) and expected != ref.hash:
        return f"{path}: manifest names {str(expected)[:12]}, expected {ref.short}"
    try:
        actual = _data_hash(path, manifest.get("record_type"), manifest.get("hash_scheme", 1))
    except Exception as exc:  # noqa: BLE001 - any unreadable or invalid data means the same: do not trust it
        return f"{path}: unreadable data ({type(exc).__name__}: {str(exc)[:200]})"
    if actual != expected:
        return f"{path}: content hash mismatch (manifest {str(expected)[:12]}, data {actual[:12]})"
    return None


def _data_hash(path: Path, record_type: str | None, scheme: int = 1) -> str:
    """The content hash of data.parquet, computed as save_records does (through the record type when known)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path / "data.parquet").column("json").to_pylist()
    model = getattr(contracts, record_type or "", None)
    if isinstance(model, type) and issubclass(model, Record):
        return content_hash(_payload([model.model_validate_json(s) for s in rows], scheme))
    return content_hash([json.loads(s) for s in rows])


def discard_dataset(folder: str | Path) -> None:
    """Remove a damaged dataset folder (renamed first, so a reader never sees it half-deleted)."""
    folder = Path(folder)
    aside = folder.with_name(f".damaged-{folder.name}-{os.getpid()}-{os.urandom(3).hex()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another writer moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def load_records(ref: DatasetRef | str | Path, record_type: type[R]) -> list[R]:
    """Read a dataset version back, verifying its content hash."""
    import pyarrow.parquet as pq

    path = Path(ref.path if isinstance(ref, DatasetRef) else ref)
    manifest = json.loads((path / "manifest.json").read_text())
    table = pq.read_table(path / "data.parquet")
    records = [record_type.model_validate_json(s) for s in table.column("json").to_pylist()]
    actual = content_hash(_payload(records, manifest.get("hash_scheme", 1)))
    if actual != manifest["hash"]:
        raise ValueError(f"{path}: content hash mismatch (manifest {manifest['hash'][:12]}, data {actual[:12]})")
    return records


def record_import(ref: DatasetRef | str | Path, entry: dict) -> list[dict]:
    """Append one import (its sources, window, time) to the dataset's manifest; returns the list.

    Why: a dataset is content-addressed, so a second import of the same failures (other files,
    another window) reuses the first one's folder; its manifest must still say every import that
    produced it, not only the first. The list is append-only, updated under a file lock (two
    importers never lose each other's entry) and written by temp file + rename (a reader never
    sees half a manifest).
    """
    import fcntl

    folder = Path(ref.path if isinstance(ref, DatasetRef) else ref)
    with open(folder / ".manifest.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            imports = list(manifest.get("imports", []))
            imports.append({"at": utcnow().isoformat(), **entry})
            manifest["imports"] = imports
            write_json_atomically(folder / "manifest.json", manifest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return imports


def recorded_imports(root: str | Path, prefixes: list[str] | None = None) -> list[DatasetRef]:
    """The stored failures datasets that imports wrote (their manifest lists `imports`), oldest first.

    `prefixes` selects some by hash prefix; each must name exactly one import dataset, else a ValueError
    names the prefix and what it matched. Why a store-level list: `r2w run` trains on what
    `r2w collect import` stored (content-hashed, scrubbed), never on re-read trace files.
    """
    found = []
    for manifest_path in sorted(Path(root, "failures").glob("*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue  # a damaged or half-moved folder is not an import (verify_dataset names it if selected)
        if manifest.get("imports"):
            ref = DatasetRef(
                kind="failures", hash=manifest["hash"], path=str(manifest_path.parent), rows=manifest["rows"]
            )
            found.append((min(str(i.get("at", "")) for i in manifest["imports"]), ref))
    refs = [ref for _, ref in sorted(found, key=lambda f: (f[0], f[1].hash))]
    if not prefixes:
        return refs
    chosen = []
    for prefix in prefixes:
        matches = [r for r in refs if r.hash.startswith(prefix)]
        if len(matches) != 1:
            known = ", ".join(r.short for r in refs) or "none"
            what = "no" if not matches else f"{len(matches)}"
            raise ValueError(
                f"collect.import_datasets: {prefix!r} matches {what} import datasets under {root} (recorded: {known})"
            )
        chosen.append(matches[0])
    return chosen


def write_json_atomically(path: str | Path, obj: object) -> Path:
    """Write JSON to a temp file beside `path`, then rename: a reader never sees half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(out)
    return out
