"""What every importer shares: reading records under a size limit, messages in the contract's shape,
outcomes, turning chat calls and tool runs into steps, and the checks an imported episode passes.

A converter (one module per format) reads raw records and returns `Draft`s: an episode without its
verdict, the key that names it in the source (an id an `--outcomes` file can refer to) and the
outcome it found, if any. `import_records` then applies the outcomes file, validates, removes
duplicates, filters successes and the time window, and counts, exactly as the r2w importer does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from r2w.contracts import Episode
from r2w.importers.shapes import FieldError, Outcome, outcome_of
from r2w.traces import (
    EMPTY_FILE,
    ImportStats,
    RecordError,
    _json,
    _loc,
    _read_jsonl,
    _short,
    check_episode,
    count_invalid,
    decode_record,
    in_window,
    parse_window,
)

LINE_SUFFIXES = {".jsonl", ".ndjson"}


def field_error(exc: FieldError, name: str, number: int, privacy=None) -> RecordError:
    """A FieldError as the importers' error line, the quoted value scrubbed and shortened."""
    got = f" (got {type(exc.value).__name__} {_short(exc.value, privacy)})" if exc.show else ""
    return RecordError(name, exc.number or number, exc.path or "<record>", exc.problem + got)


# ---------------------------------------------------------------- reading records


def read_records(path: Path, max_record_bytes: int) -> tuple[list[tuple[int, object]], list[RecordError]]:
    """Parsed records of a JSON file, each checked against the size limit before it is parsed.

    .jsonl/.ndjson: one record per line (record N = line N). Anything else: the JSON values in the
    file, where a top-level array's elements are the records (record N = element N) and otherwise
    each top-level value is one (record N = the line it starts on): a pretty-printed object, JSONL.
    """
    if path.suffix.lower() in LINE_SUFFIXES:
        return _read_jsonl(path, max_record_bytes)
    name, records, errors = str(path), [], []
    for number, item in _values(path, max_record_bytes):
        decode_record(name, number, item, max_record_bytes, "utf-8-sig", records, errors)
    return records, errors


_SPECIAL = re.compile(rb'["\\\[\]{},\n]')
_STRING_SPECIAL = re.compile(rb'["\\\n]')


def _values(path: Path, limit: int, chunk: int = 2**20) -> Iterator[tuple[int, bytes | int]]:
    """(record number, its bytes or, when over `limit`, its size) for each top-level JSON value, or each
    element of a top-level array. Never holds more than one record (up to the limit) plus one chunk."""
    buf = bytearray()
    size = 0  # bytes of the current value (also counted when it is too big to keep)
    line, start_line, ordinal = 1, 1, 0
    depth, in_string, escaped = 0, False, False
    array = None  # None: not decided yet; True: records are the elements of a top-level array
    base = 0  # the depth at which records start (1 inside the top-level array)
    started = False

    def flush():
        nonlocal buf, size, started, ordinal
        ordinal += 1
        number = ordinal if array else start_line
        out = bytes(buf) if size <= limit else size
        buf, size, started = bytearray(), 0, False
        return number, out

    with path.open("rb") as fh:
        while True:
            data = fh.read(chunk)
            if not data:
                break
            i = 0
            n = len(data)
            while i < n:
                if in_string:
                    m = _STRING_SPECIAL.search(data, i)
                    j = m.start() if m else n
                    if escaped and j > i:
                        escaped = False
                    end = j + 1 if m else n
                    piece = data[i:end]
                    if m:
                        c = data[j : j + 1]
                        if c == b"\n":
                            line += 1
                        elif escaped:
                            escaped = False
                        elif c == b"\\":
                            escaped = True
                        else:
                            in_string = False
                    size += len(piece)
                    if size <= limit:
                        buf += piece
                    i = end
                    continue
                m = _SPECIAL.search(data, i)
                j = m.start() if m else n
                if j > i:  # plain bytes (numbers, literals, whitespace)
                    piece = data[i:j]
                    if not started and piece.strip():
                        started, start_line = True, line
                        if array is None:
                            array = False
                    if started:
                        size += len(piece)
                        if size <= limit:
                            buf += piece
                if not m:
                    break
                c = data[j : j + 1]
                i = j + 1
                if c == b"\n":
                    line += 1
                    if started and depth == base:
                        if not array:
                            yield flush()  # a bare top-level value (a number, a literal) ends at the line
                    elif started:
                        size += 1
                        if size <= limit:
                            buf += c
                    continue
                if array is None:
                    array = c == b"["
                    if array:
                        depth, base = 1, 1
                        continue
                if c == b"," and depth == base:
                    if started:
                        yield flush()
                    continue
                if c == b"]" and array and depth == 1:
                    if started:
                        yield flush()
                    depth = 0
                    continue
                if not started:
                    started, start_line = True, line
                size += 1
                if size <= limit:
                    buf += c
                if c == b'"':
                    in_string = True
                elif c in (b"{", b"["):
                    depth += 1
                elif c in (b"}", b"]"):
                    depth -= 1
                    if depth == base and not array:
                        yield flush()
    if started and (size > limit or bytes(buf).strip()):
        yield flush()


def first_record(path: Path, max_record_bytes: int) -> object:
    """The first parsed record of a file (None when there is none or it does not parse): for detection."""
    if path.suffix.lower() in LINE_SUFFIXES:
        records, _ = _read_jsonl(path, max_record_bytes)
        return records[0][1] if records else None
    for _number, item in _values(path, max_record_bytes):
        if isinstance(item, int):
            return None
        value, problem = _json(item.decode("utf-8-sig", "replace"))
        return None if problem else value
    return None


def read_outcomes(
    path: str | Path, max_record_bytes: int, privacy=None
) -> tuple[dict[str, Outcome], list[RecordError]]:
    """An outcomes side file: records {id, success | label | score [, outcome] [, expected]} (JSONL or a JSON
    array). `expected` is the reference the episode should have reached, kept as its gold data: a string
    (the expected final answer) or {expected_answer?, expected_tool_calls?: [{name, arguments}]}."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        return {}, [RecordError(name, 0, "-", "no such file" if not path.exists() else "not a regular file")]
    try:
        records, errors = read_records(path, max_record_bytes)
    except OSError as exc:
        return {}, [RecordError(name, 0, "-", f"cannot read: {exc.strerror or exc}")]
    out: dict[str, Outcome] = {}
    for number, raw in records:
        try:
            if not isinstance(raw, dict):
                raise FieldError("<record>", "expected a JSON object {id, success | label | score}", raw)
            key = raw.get("id")
            if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
                raise FieldError("id", "expected the episode's id in its source (a string)", key)
            outcome = outcome_of(raw, "", "outcomes-file")
            if outcome is None:
                raise FieldError("success", "no outcome: give success, label or score", None, show=False)
            outcome.gold = expected_gold(raw.get("expected"))
            if str(key) in out:
                raise FieldError("id", "duplicate id", key)
            out[str(key)] = outcome
        except FieldError as exc:
            errors.append(field_error(exc, name, number, privacy))
    return out, errors


def expected_gold(value: object) -> dict:
    """An outcomes record's `expected` as Episode.gold ({} when absent); a FieldError names what is wrong.

    The keys are the ones a replay verifier reads (evaluation/environments/trace_replay.py)."""
    if value is None:
        return {}
    if isinstance(value, str) and value.strip():
        return {"expected_answer": value}
    if isinstance(value, dict) and value and set(value) <= {"expected_answer", "expected_tool_calls"}:
        answer, calls = value.get("expected_answer"), value.get("expected_tool_calls")
        if answer is not None and not (isinstance(answer, str) and answer.strip()):
            raise FieldError("expected.expected_answer", "expected a non-empty string", answer)
        if calls is not None and not (
            isinstance(calls, list)
            and calls
            and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls)
        ):
            raise FieldError("expected.expected_tool_calls", "expected a list of {name, arguments}", calls)
        return dict(value)
    raise FieldError(
        "expected", "expected the final answer (a string) or {expected_answer, expected_tool_calls}", value
    )


# ---------------------------------------------------------------- the import itself


def import_records(
    name: str,
    records: list[tuple[int, object]],
    errors: list[RecordError],
    convert,
    *,
    since=None,
    until=None,
    skip_invalid: bool = False,
    stats: ImportStats | None = None,
    privacy=None,
    outcomes: dict[str, Outcome] | None = None,
) -> tuple[list[Episode], list[RecordError]]:
    """The shared second half of every importer: drafts -> validated failures in the window, or errors."""
    since, until = parse_window(since, until)
    stats = stats if stats is not None else ImportStats()
    if not records and not errors:
        errors.append(RecordError(name, 0, "-", EMPTY_FILE))
    drafts, problems = convert(name, records, privacy)
    errors = errors + problems
    kept: list[Episode] = []
    seen: dict[str, int] = {}
    now = datetime.now(UTC)
    for draft in drafts:
        stats.records += 1
        outcome = (outcomes or {}).get(draft.key) or draft.outcome
        if outcome is None:
            errors.append(
                RecordError(
                    name,
                    draft.number,
                    draft.outcome_field,
                    f"no outcome for {_short(draft.key, privacy)}: put success, label or score on the record,"
                    " or list its id in an --outcomes file",
                )
            )
            continue
        try:
            fields = draft.fields
            if outcome.gold:  # an outcomes file's `expected` joins the gold the record itself carried
                fields = {**fields, "gold": {**fields.get("gold", {}), **outcome.gold}}
            episode = Episode(
                **fields,
                success=outcome.success,
                score=outcome.score,
                outcome=outcome.text,
                verdict_by=outcome.verdict_by,
            )
        except ValidationError as exc:
            for err in exc.errors():
                got = err.get("input")
                detail = "" if isinstance(got, dict | list) else f" (got {type(got).__name__} {_short(got, privacy)})"
                errors.append(RecordError(name, draft.number, _loc(err["loc"]) or "<record>", err["msg"] + detail))
            continue
        bad = check_episode(name, draft.number, episode, now)
        if not bad and episode.episode_id in seen:
            bad = [RecordError(name, draft.number, "id", f"duplicate of record {seen[episode.episode_id]}")]
        if bad:
            errors.extend(bad)
            continue
        seen[episode.episode_id] = draft.number
        if episode.success:
            stats.skipped_success += 1
        elif not in_window(episode.created_at, since, until):
            stats.skipped_window += 1
        else:
            kept.append(episode)
    errors.sort(key=lambda e: e.record)
    stats.invalid += count_invalid(errors)[0]
    if errors and (not skip_invalid or any(e.unusable_file for e in errors)):
        return [], errors
    stats.failures += len(kept)
    return kept, errors


def guarded(convert_one):
    """Wrap a per-record converter `(record, number) -> list[Draft]` so that a FieldError becomes a
    RecordError naming the file, the record and the field; returns a `convert` for `import_records`."""

    def convert(name: str, records: list[tuple[int, object]], privacy=None):
        drafts, errors = [], []
        for number, raw in records:
            try:
                drafts.extend(convert_one(raw, number))
            except FieldError as exc:
                errors.append(field_error(exc, name, number, privacy))
            except RecursionError:
                errors.append(RecordError(name, number, "<record>", "not usable JSON: nested too deeply"))
        return drafts, errors

    return convert
