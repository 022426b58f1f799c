"""Import failed episodes from where agents already log them: trace files and MLflow traces.

Trace file schema: one episode per record, each record an `Episode` (r2w/contracts.py) as JSON.
- JSONL (.jsonl/.json/.ndjson): one JSON object per line; blank lines are ignored; record N is line N.
- Parquet (.parquet/.pq): either a `json` column holding that object as a string per row (what
  r2w's own datasets store), or one column per Episode field (`steps` as a JSON string or a list
  of structs); record N is row N (1-based).
Required per record: episode_id, env, category, task_id, split, seed, task, created_at (ISO 8601,
naive = UTC; the time window needs it). Everything else defaults as in `Episode`; unknown fields are
errors. Only failures (`success` false) are kept; successes and records outside the window are
counted and skipped.

Any invalid record makes the whole import write nothing, unless the caller asks to skip invalid
records (`--skip-invalid`); each error names the file, the record number and the field.

MLflow traces: a trace is a failure when its state is ERROR or it carries a failing feedback
assessment (`mlflow.log_feedback` with value False / 0 / "no" / "fail" ...). It becomes an Episode
losslessly (model-call spans -> steps with their tool calls, TOOL spans -> tool results, expectations
-> `gold`): r2w/importers/mlflow_traces.py, shared with MLflow trace exports. Other formats (OpenAI chat,
OpenTelemetry GenAI, LangSmith, Langfuse): r2w/importers/.

Time windows are half-open, since <= created_at < until, on every source; rollouts always stamp
episodes with the time they ran, so a window selects imported failures only.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from r2w.contracts import Episode, iter_strings
from r2w.datasets import record_import, save_records
from r2w.importers.mlflow_traces import failure_reason, trace_to_episode
from r2w.importers.shapes import FAILING_VALUES, TASK_KEYS, is_failing_value  # noqa: F401 - re-exported
from r2w.privacy import scrub_episodes, scrub_text
from r2w.tracking import client_for, log_metrics, log_params, start_run

REQUIRED = ("episode_id", "env", "category", "task_id", "split", "seed", "task", "created_at")
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
MAX_RECORD_BYTES = 8 * 2**20  # default of collect.max_record_bytes
EMPTY_FILE = "no records (empty file)"
MAX_CLOCK_SKEW = timedelta(minutes=5)  # a created_at later than now + this is an error, not a future episode


@dataclass(frozen=True)
class RecordError:
    """One bad record: where it is and what is wrong with which field."""

    file: str
    record: int  # 1-based line (JSONL) or row (Parquet); 0 = the file as a whole
    field: str
    message: str

    def __post_init__(self) -> None:
        # Second line of defence: whatever built the message, the field name and message that reach
        # the console, MLflow's r2w.error tag and Prefect's logs/states carry no raw secret and no
        # text that cannot be encoded (a lone surrogate from JSON would crash the printer).
        field = safe_text(self.field)  # a field can be an input key: of any length
        object.__setattr__(self, "field", field if len(field) <= 80 else field[:77] + "...")
        object.__setattr__(self, "message", safe_text(self.message))

    @property
    def unusable_file(self) -> bool:
        """The file itself cannot be used (missing, a folder, unreadable): `--skip-invalid` skips bad
        records, never a mistyped path. An empty file is a file with no records, not unusable."""
        return self.record == 0 and self.message != EMPTY_FILE

    def __str__(self) -> str:
        where = f"record {self.record}" if self.record else "file"
        return f"{self.file}: {where}: {self.field}: {self.message}"


def safe_text(text: str, cfg=None) -> str:
    """Text quoted from untrusted input, fit for messages: secrets scrubbed, encodable as UTF-8."""
    return scrub_text(text.encode("utf-8", "backslashreplace").decode("utf-8"), cfg)


def count_invalid(errors: list[RecordError]) -> tuple[int, int]:
    """(invalid records, unreadable files): a record with three bad fields is one invalid record."""
    records = {(e.file, e.record) for e in errors if e.record}
    files = {e.file for e in errors if not e.record}
    return len(records), len(files)


class TraceImportError(ValueError):
    """Invalid records and no permission to skip them: nothing was imported."""

    def __init__(self, errors: list[RecordError], shown: int = 20) -> None:
        self.errors = errors
        lines = [str(e) for e in errors[:shown]]
        more = f"\n... and {len(errors) - shown} more error(s)" if len(errors) > shown else ""
        records, files = count_invalid(errors)
        counted = [f"{records} invalid record(s)"] if records or not files else []
        counted += [f"{files} unusable file(s)"] if files else []
        super().__init__(
            f"{', '.join(counted)}; nothing imported (use --skip-invalid to import the valid records):\n"
            + "\n".join(lines)
            + more
        )


@dataclass
class ImportStats:
    records: int = 0
    failures: int = 0
    skipped_success: int = 0
    skipped_window: int = 0
    invalid: int = 0
    sources: list[str] = field(default_factory=list)

    def add(self, other: ImportStats) -> None:
        for name in ("records", "failures", "skipped_success", "skipped_window", "invalid"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sources += other.sources


def parse_when(text: str | datetime | None, name: str = "--since") -> datetime | None:
    """ISO 8601 date or datetime; naive means UTC."""
    if text is None or text == "":
        return None
    if isinstance(text, datetime):
        when = text
    else:
        try:
            when = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name} {text!r}: expected an ISO 8601 date or datetime, e.g. 2026-11-01T12:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_window(since: str | datetime | None, until: str | datetime | None) -> tuple[datetime | None, datetime | None]:
    """Both ends of a half-open window, parsed; a ValueError when the window is empty or inverted."""
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"--until {until!s} must be after --since {since!s} (the window [since, until) is empty)")
    return start, end


def in_window(when: datetime, since: datetime | None, until: datetime | None) -> bool:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return (since is None or when >= since) and (until is None or when < until)


# ---------------------------------------------------------------- trace files


def import_trace_file(
    path: str | Path,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    skip_invalid: bool = False,
    stats: ImportStats | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    privacy=None,
) -> tuple[list[Episode], list[RecordError]]:
    """Validate every record of a JSONL/Parquet trace file; return (failures in the window, errors).

    With errors and skip_invalid=False the episode list is empty: the caller writes nothing.
    A record larger than `max_record_bytes` is an error naming it, and is never parsed, in every
    format. Values quoted in errors are scrubbed with `privacy` (a PrivacyConfig; None = built-ins).
    """
    path = Path(path)
    since, until = parse_window(since, until)
    stats = stats if stats is not None else ImportStats()
    stats.sources.append(str(path))
    name = str(path)
    if path.is_dir():
        return [], [RecordError(name, 0, "-", "is a directory; expected a JSONL or Parquet trace file")]
    if not path.is_file():
        what = "no such file" if not path.exists() else "not a regular file"
        return [], [RecordError(name, 0, "-", what)]
    suffix = path.suffix.lower()
    try:
        if suffix in JSONL_SUFFIXES:
            raw_records, errors = _read_jsonl(path, max_record_bytes)
        elif suffix in PARQUET_SUFFIXES:
            raw_records, errors = _read_parquet(path, max_record_bytes)
        else:
            return [], [RecordError(name, 0, "-", f"unknown format {suffix!r} (expected .jsonl or .parquet)")]
    except OSError as exc:  # permission denied, I/O error: the file, not a record, is the problem
        return [], [RecordError(name, 0, "-", f"cannot read: {exc.strerror or exc}")]
    if not raw_records and not errors:
        errors.append(RecordError(name, 0, "-", EMPTY_FILE))
    kept: list[Episode] = []
    seen: dict[str, int] = {}
    now = datetime.now(UTC)
    for number, raw in raw_records:
        stats.records += 1
        episode, problems = _validate(name, number, raw, privacy, now)
        if episode is not None and episode.episode_id in seen:
            problems = [RecordError(name, number, "episode_id", f"duplicate of record {seen[episode.episode_id]}")]
        if problems:
            errors.extend(problems)
            continue
        seen[episode.episode_id] = number
        if episode.success:
            stats.skipped_success += 1
        elif not in_window(episode.created_at, since, until):
            stats.skipped_window += 1
        else:
            kept.append(episode.model_copy(update={"source": "trace-file"}))
    errors.sort(key=lambda e: e.record)
    stats.invalid += count_invalid(errors)[0]
    if errors and (not skip_invalid or any(e.unusable_file for e in errors)):
        return [], errors
    stats.failures += len(kept)
    return kept, errors


def _read_jsonl(
    path: Path, max_record_bytes: int = MAX_RECORD_BYTES
) -> tuple[list[tuple[int, object]], list[RecordError]]:
    name, records, errors = str(path), [], []
    for number, line in enumerate(_lines(path, max_record_bytes), start=1):
        encoding = "utf-8-sig" if number == 1 else "utf-8"  # a BOM opens some editors' files
        decode_record(name, number, line, max_record_bytes, encoding, records, errors)
    return records, errors


def decode_record(
    name: str,
    number: int,
    raw: bytes | int,
    max_record_bytes: int,
    encoding: str,
    records: list[tuple[int, object]],
    errors: list[RecordError],
) -> None:
    """One record's bytes (or its size, when it was over the limit) -> a parsed JSON value appended to
    `records`, or the reason it is not one appended to `errors`; blank records are skipped."""
    if isinstance(raw, int):
        limit = f"the limit is {max_record_bytes:,} (collect.max_record_bytes)"
        errors.append(RecordError(name, number, "<record>", f"record is {raw:,} bytes; {limit}"))
        return
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        errors.append(RecordError(name, number, "<record>", f"not valid UTF-8 (byte {exc.start}: {exc.reason})"))
        return
    if not text.strip():
        return
    value, problem = _json(text)
    if problem:
        errors.append(RecordError(name, number, "<record>", problem))
    else:
        records.append((number, value))


def _json(text: str) -> tuple[object, str]:
    """(parsed value, '') or (None, why it is not JSON); nesting too deep for the parser is an error too."""
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "not usable JSON: nested too deeply"


def _lines(path: Path, limit: int, chunk: int = 2**20):
    """Each line's bytes, or its length (an int) when it is longer than `limit`: never held in memory."""
    with path.open("rb") as fh:
        while True:
            line = fh.readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line)
                while True:  # skip the rest of the oversized line without keeping it
                    more = fh.readline(chunk)
                    size += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                yield size - (1 if more.endswith(b"\n") else 0)
                continue
            yield line.rstrip(b"\r\n")


def _read_parquet(
    path: Path, max_record_bytes: int = MAX_RECORD_BYTES
) -> tuple[list[tuple[int, object]], list[RecordError]]:
    """Rows of a Parquet trace file, one row group at a time, each row's size checked in Arrow
    before it becomes Python objects.

    Why row groups: `read_table().to_pylist()` turned one 100 MB value of a 4.9 MB file into a
    1.32 GB peak. A row group whose column chunks (footer metadata) add up to no more than the limit
    cannot hold an oversized row and is read whole; any other is streamed one row at a time and a
    row over the limit is reported and dropped while it is still one Arrow buffer. A data page
    that cannot be decoded is reported with its row group, its rows and the column that fails.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        columns = pf.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as exc:
        return [], [RecordError(name, 0, "-", f"not a readable Parquet file: {exc}")]
    records: list[tuple[int, object]] = []
    errors: list[RecordError] = []
    first = 1
    for group in range(meta.num_row_groups):
        rows_meta = meta.row_group(group)
        n, size = rows_meta.num_rows, rows_meta.total_byte_size
        last = first + n - 1
        if n == 1 and size > max_record_bytes:
            errors.append(_too_big(name, first, size, max_record_bytes))
        else:
            try:
                batches = (
                    [pf.read_row_group(group)]
                    if size <= max_record_bytes
                    else pf.iter_batches(batch_size=1, row_groups=[group], use_threads=False)
                )
                number = first
                for batch in batches:
                    # the footer's sizes are the writer's claim: check what was actually decoded
                    oversized = set()
                    if batch.nbytes > max_record_bytes:
                        for i in range(batch.num_rows):
                            row_bytes = batch.slice(i, 1).nbytes
                            if row_bytes > max_record_bytes:
                                oversized.add(i)
                                errors.append(_too_big(name, number + i, row_bytes, max_record_bytes))
                    for i, row in enumerate(_rows_of(batch, name, number, errors, oversized)):
                        records.append(_parquet_record(name, number + i, row, columns, errors))
                    number += batch.num_rows
            except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
                bad = _undecodable_columns(pf, group, columns)
                where = f"row group {group + 1} of {meta.num_row_groups} (rows {first}-{last})"
                errors.append(
                    RecordError(name, first, ",".join(bad) or "<row group>", f"{where} cannot be decoded: {exc}")
                )
                records = [r for r in records if not first <= r[0] <= last]
        first = last + 1
    records = [r for r in records if r[1] is not None]
    return records, errors


def _too_big(name: str, number: int, size: int, limit: int) -> RecordError:
    return RecordError(
        name, number, "<record>", f"record is {size:,} bytes; the limit is {limit:,} (collect.max_record_bytes)"
    )


def _rows_of(batch, name: str, first: int, errors: list[RecordError], skip: set[int]):
    """The batch's rows as dicts (None for rows in `skip`, already reported); a row that Arrow cannot
    turn into Python (a timestamp out of range) is an error naming it."""
    if not skip:
        try:
            yield from batch.to_pylist()
            return
        except (ValueError, OverflowError, TypeError, pa_error()):
            pass
    for i in range(batch.num_rows):  # row by row: find the row(s) that fail, keep the others
        if i in skip:
            yield None
            continue
        try:
            yield batch.slice(i, 1).to_pylist()[0]
        except (ValueError, OverflowError, TypeError, pa_error()) as exc:
            errors.append(RecordError(name, first + i, "<record>", f"cannot be read: {exc}"))
            yield None


def pa_error() -> type[Exception]:
    import pyarrow as pa

    return pa.ArrowException


def _parquet_record(name: str, number: int, row: dict | None, columns: list[str], errors: list[RecordError]):
    """(record number, raw record) of one row: the `json` column parsed, or the field columns."""
    if row is None:
        return number, None
    if "json" in columns:
        value = row.get("json")
        if isinstance(value, str):
            value, problem = _json(value)
            if problem:
                errors.append(RecordError(name, number, "json", problem))
                return number, None
        return number, value
    if isinstance(row.get("steps"), str):
        steps, problem = _json(row["steps"])
        if problem:
            errors.append(RecordError(name, number, "steps", problem))
            return number, None
        row["steps"] = steps
    return number, {k: v for k, v in row.items() if v is not None or k in REQUIRED}


def _undecodable_columns(pf, group: int, columns: list[str]) -> list[str]:
    """Which columns of a row group fail to decode (empty when none does alone)."""
    bad = []
    for column in columns:
        try:
            pf.read_row_group(group, columns=[column])
        except Exception:  # noqa: BLE001 - any decoding failure names the column
            bad.append(column)
    return bad


def _validate(
    name: str, number: int, raw: object, privacy=None, now: datetime | None = None
) -> tuple[Episode | None, list[RecordError]]:
    if not isinstance(raw, dict):
        return None, [RecordError(name, number, "<record>", f"expected a JSON object, got {type(raw).__name__}")]
    errors = [
        RecordError(name, number, key, "field required (the Episode schema; created_at drives --since/--until)")
        for key in REQUIRED
        if key not in raw
    ]
    try:
        episode = Episode.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _loc(err["loc"])
            if err["type"] == "missing" and loc in REQUIRED:
                continue  # already reported above
            got = err.get("input")
            detail = "" if isinstance(got, dict) else f" (got {type(got).__name__} {_short(got, privacy)})"
            errors.append(RecordError(name, number, loc or "<record>", err["msg"] + detail))
        return None, errors
    if errors:
        return None, errors
    errors = check_episode(name, number, episode, now)
    return (None, errors) if errors else (episode, [])


def check_episode(name: str, number: int, episode: Episode, now: datetime | None = None) -> list[RecordError]:
    """What a valid Episode can still get wrong: text that is not Unicode, a created_at in the future."""
    errors = []
    for path, text in iter_strings(episode):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            errors.append(RecordError(name, number, path, f"not valid Unicode text ({exc.reason} at {exc.start})"))
    when = episode.created_at if episode.created_at.tzinfo else episode.created_at.replace(tzinfo=UTC)
    latest = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    if when > latest:
        errors.append(
            RecordError(
                name,
                number,
                "created_at",
                f"in the future: more than {MAX_CLOCK_SKEW} after now ({latest:%Y-%m-%dT%H:%M}Z)"
                f" (got datetime {when.isoformat()})",
            )
        )
    return errors


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: object, privacy=None, limit: int = 40) -> str:
    """A quoted input value for an error message: scrubbed first (a cut could split a key so that the
    scrubber no longer sees it), then shortened."""
    text = safe_text(repr(value), privacy)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- MLflow traces


def import_mlflow_traces(
    tracking_uri: str,
    experiment: str,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    stats: ImportStats | None = None,
) -> list[Episode]:
    """Failed traces (state ERROR, or a failing feedback assessment) of an experiment, as Episodes."""
    import mlflow
    from mlflow import MlflowClient

    since, until = parse_window(since, until)
    stats = stats if stats is not None else ImportStats()
    stats.sources.append(f"{tracking_uri}#{experiment}")
    mlflow.flush_trace_async_logging()
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--experiment {experiment!r}: no such MLflow experiment at {tracking_uri}")
    clauses = []
    if since is not None:
        clauses.append(f"trace.timestamp_ms >= {int(since.timestamp() * 1000)}")
    if until is not None:
        clauses.append(f"trace.timestamp_ms < {int(until.timestamp() * 1000)}")
    # One windowed search without spans, then a Python predicate: a failing feedback may have any
    # name and value type (False, 0, "no", "fail"), which one filter string cannot express.
    picked, token = [], None
    while True:
        page = client.search_traces(
            locations=[exp.experiment_id],
            filter_string=" AND ".join(clauses) or None,
            max_results=500,
            order_by=["timestamp_ms ASC"],
            page_token=token,
            include_spans=False,
        )
        for trace in page:
            stats.records += 1
            if failure_reason(trace.info):
                picked.append(trace.info.trace_id)
            else:
                stats.skipped_success += 1
        token = page.token
        if not token:
            break
    episodes = [trace_to_episode(client.get_trace(tid, display=False), experiment) for tid in picked]
    stats.failures += len(episodes)
    return episodes


# ---------------------------------------------------------------- storing + lineage


def log_dataset_input(client, run_id: str, ref, episodes: list[Episode], context: str = "failures") -> None:
    """Record a stored episodes dataset as an MLflow dataset input of the run (name, digest, schema, source)."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    df = pd.DataFrame(
        [
            {
                "episode_id": e.episode_id,
                "env": e.env,
                "category": e.category,
                "task_id": e.task_id,
                "success": e.success,
                "outcome": e.outcome,
                "policy": e.policy,
                "model": e.model,
                "source": e.source,
                "steps": len(e.steps),
                "created_at": e.created_at.isoformat(),
            }
            for e in episodes
        ],
        columns=["episode_id", "env", "category", "task_id", "success", "outcome", "policy", "model", "source"]
        + ["steps", "created_at"],
    )
    source = str(Path(ref.path).resolve() / "data.parquet")
    with warnings.catch_warnings():  # MLflow registers the local source class twice and warns on int columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=source, name=f"{ref.kind}-{ref.short}", digest=ref.hash[:36])
    tags = [InputTag(key="mlflow.data.context", value=context)]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])


def save_imported(
    cfg,
    episodes: list[Episode],
    stats: ImportStats,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    run_name: str = "collect-import",
):
    """Store imported failures as a 'failures' dataset version and log it as an input of a new MLflow run.

    Returns (DatasetRef, run_id), or (None, None) when there is nothing to store: an import that
    ends with no failures writes no empty dataset and no run. Every import's sources and window
    are appended to the manifest's `imports` (a reused content-addressed folder keeps them all).
    """

    if not episodes:  # nothing to store: no empty dataset, no MLflow run
        return None, None
    since, until = parse_window(since, until)
    window = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None}
    episodes, scrubbed = scrub_episodes(episodes, cfg.privacy)  # untrusted text: scrubbed before it is stored
    meta = {"sources": stats.sources, "window": window, "imported": True, "scrubbed": scrubbed}
    ref = save_records(episodes, Path(cfg.data_path) / "datasets", "failures", meta)
    record_import(ref, {"sources": stats.sources, "window": window, "run_name": run_name, "rows": ref.rows})
    client = client_for(cfg)
    run_id = start_run(client, cfg, run_name, tags={"r2w.stage": "collect", "r2w.failures_dataset": ref.hash})
    log_params(client, run_id, {"sources": ",".join(stats.sources)[:500], **window})
    log_metrics(
        client,
        run_id,
        {
            "collect.records": stats.records,
            "collect.failures": stats.failures,
            "collect.skipped_success": stats.skipped_success,
            "collect.skipped_window": stats.skipped_window,
            "collect.invalid": stats.invalid,
            **{f"privacy.scrubbed.{kind}": n for kind, n in scrubbed.items()},
        },
    )
    log_dataset_input(client, run_id, ref, episodes)
    client.set_terminated(run_id)
    return ref, run_id
