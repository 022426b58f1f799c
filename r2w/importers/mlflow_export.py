"""MLflow trace exports: one trace per record, as `Trace.to_json()` writes it ({info, data: {spans}}),
in JSONL or a JSON array. The mapping is the live path's (r2w.importers.mlflow_traces), strict: a
model-call span whose messages do not parse is an error naming the span."""

from __future__ import annotations

from r2w.importers.common import guarded
from r2w.importers.mlflow_traces import outcome_of_trace, trace_fields
from r2w.importers.shapes import Draft, FieldError, Outcome, need

FORMAT = "mlflow"


def _convert(raw: object, number: int) -> list[Draft]:
    from mlflow.entities import Trace  # heavy: imported when an export is read

    need(raw, "<record>", dict, "an MLflow trace object {info, data}")
    info = need(raw.get("info"), "info", dict, "an object (the trace's info)")
    trace_id = need(info.get("trace_id", info.get("request_id")), "info.trace_id", str, "a string")
    need(info.get("request_time", info.get("timestamp_ms")), "info.request_time", (str, int), "a time")
    data = need(raw.get("data"), "data", dict, "an object {spans}")
    spans = need(data.get("spans"), "data.spans", list, "a list of spans")
    for i, span in enumerate(spans):
        need(span, f"data.spans[{i}]", dict, "a span object")
        need(span.get("name"), f"data.spans[{i}].name", str, "a string")
    try:
        trace = Trace.from_dict(raw)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds on a malformed dict
        raise FieldError("<record>", f"not an MLflow trace: {type(exc).__name__}: {exc}", None, show=False) from None
    fields = trace_fields(trace, "export", strict=True)
    outcome = outcome_of_trace(trace.info)
    error = fields.pop("outcome")
    if error:
        outcome = Outcome(outcome.success, outcome.score, f"{outcome.text}; {error}", outcome.verdict_by)
    fields["source"] = FORMAT
    return [Draft(number, trace_id, fields, outcome)]


convert = guarded(_convert)
