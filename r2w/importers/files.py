"""One entry point for every trace file: `import_file(path, fmt=None, ...)`.

Formats: r2w (r2w's own Episode JSON, JSONL or Parquet), openai (chat JSONL), otel (OTLP/JSON GenAI
spans), mlflow (trace exports), langsmith (run exports), langfuse (trace exports). Without `fmt`, the
first record decides (see `detect`); Parquet is always r2w's.
"""

from __future__ import annotations

from pathlib import Path

from r2w.importers import langfuse, langsmith, mlflow_export, openai_chat, otel
from r2w.importers.common import first_record, import_records, read_outcomes, read_records
from r2w.importers.shapes import Outcome
from r2w.traces import MAX_RECORD_BYTES, PARQUET_SUFFIXES, REQUIRED, ImportStats, RecordError, import_trace_file

CONVERTERS = {
    "openai": openai_chat.convert,
    "otel": otel.convert,
    "mlflow": mlflow_export.convert,
    "langsmith": langsmith.convert,
    "langfuse": langfuse.convert,
}
FORMATS = ("r2w", *CONVERTERS)


def detect(record: object) -> str | None:
    """The format a first record is in, by the fields only that format has (None: unknown)."""
    if not isinstance(record, dict):
        return None
    if "resourceSpans" in record:
        return "otel"
    if isinstance(record.get("info"), dict) and isinstance(record.get("data"), dict):
        return "mlflow"
    if "run_type" in record or ("run_id" in record and "key" in record):
        return "langsmith"
    if "observations" in record or ("scores" in record and "timestamp" in record):
        return "langfuse"
    if "episode_id" in record:
        return "r2w"
    if "messages" in record:
        return "openai"
    return None


def import_file(
    path: str | Path,
    fmt: str | None = None,
    since=None,
    until=None,
    skip_invalid: bool = False,
    stats: ImportStats | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    privacy=None,
    outcomes: dict[str, Outcome] | None = None,
):
    """(failures in the window, errors) of one file; nothing when there are errors (unless skip_invalid)."""
    path = Path(path)
    name = str(path)
    if fmt is not None and fmt not in FORMATS:
        return [], [RecordError(name, 0, "-", f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")]
    if fmt in (None, "r2w") and path.suffix.lower() in PARQUET_SUFFIXES or fmt == "r2w":
        return import_trace_file(path, since, until, skip_invalid, stats, max_record_bytes, privacy)
    stats = stats if stats is not None else ImportStats()
    if path.is_dir() or not path.is_file():
        return import_trace_file(path, since, until, skip_invalid, stats, max_record_bytes, privacy)
    try:
        if fmt is None:
            first = first_record(path, max_record_bytes)
            fmt = detect(first)
            if fmt is None and (not isinstance(first, dict) or any(k in first for k in REQUIRED)):
                fmt = "r2w"  # empty, unparsable or r2w-like: the r2w importer names what is wrong, as before
            if fmt is None:
                stats.sources.append(name)
                return [], [
                    RecordError(name, 1, "<record>", "unknown format: name it with --format " + "|".join(FORMATS))
                ]
            if fmt == "r2w":
                return import_trace_file(path, since, until, skip_invalid, stats, max_record_bytes, privacy)
        stats.sources.append(name)
        records, errors = read_records(path, max_record_bytes)
    except OSError as exc:
        return [], [RecordError(name, 0, "-", f"cannot read: {exc.strerror or exc}")]
    return import_records(
        name,
        records,
        errors,
        CONVERTERS[fmt],
        since=since,
        until=until,
        skip_invalid=skip_invalid,
        stats=stats,
        privacy=privacy,
        outcomes=outcomes,
    )


def load_outcomes(path: str | Path | None, max_record_bytes: int = MAX_RECORD_BYTES, privacy=None):
    """An --outcomes file as {id: Outcome} and its errors (none when no file is given)."""
    if path is None:
        return {}, []
    return read_outcomes(path, max_record_bytes, privacy)
