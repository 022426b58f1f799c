"""Test helpers for imported failures as training data (issue 23.2): trace files in each format with
several failures, a help-desk failure as an OpenAI chat trace, and a stand-in for a capable teacher.

The teacher is `FakeOpenAIServer` (tests/fake_openai.py), a named fake: the real thing (a capable hosted
teacher behind an OpenAI-compatible URL) cannot run here, and the tiny random test model never writes a
verifiable answer, so without it no run would get past "no verified teacher successes". Everything else
in the runs is real.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from r2w.importers.files import import_file

SAMPLES = Path(__file__).parent / "data" / "traces"
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito", "Hanoi", "Accra", "Dakar", "Perth"]
# format -> (sample file, id fragments made unique in each copy)
FORMATS = {
    "openai": ("openai_chat.jsonl", ["conv-001"]),
    "otel": ("otel_genai.json", ["4bf92f3577b34da6a3ce929d0e0e4736", "5b8aa5a2d2c872e8321cf37308d69df2"]),
    "mlflow": ("mlflow_traces.jsonl", ["affbf413e4b47783030142c5b6a0383c"]),
    "langsmith": ("langsmith_runs.jsonl", ["6f1c0d3e-0000-4000-8000-"]),
    "langfuse": ("langfuse_traces.json", ["lf-trace-0001", "obs-"]),
}
QUESTION = re.compile(r"weather in (\w+)\?")


def gold_answer(city: str) -> str:
    return f"It is rainy and 14°C in {city}."


def weather_traces(fmt: str, n: int, out: Path) -> tuple[Path, Path | None]:
    """`n` copies of the format's sample failure (one city each, ids made unique) and, except for MLflow
    (whose export carries its expectation), an --outcomes file giving each failure's expected answer."""
    name, fragments = FORMATS[fmt]
    text = (SAMPLES / name).read_text()
    if fmt == "openai":
        text = text.splitlines()[0] + "\n"  # its failure only (the others: a success, an unlabelled one)
    parts = []
    for k in range(n):
        part = text.replace("Paris", CITIES[k])
        for fragment in fragments:
            part = part.replace(fragment, _unique(fragment, k))
        parts.append(part)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    if fmt == "langfuse":  # one JSON array of traces
        path.write_text(json.dumps([t for p in parts for t in json.loads(p)], ensure_ascii=False))
    else:  # JSONL lines, or (OTLP/JSON) one top-level object per copy
        path.write_text("".join(p if p.endswith("\n") else p + "\n" for p in parts))
    if fmt == "mlflow":
        return path, None
    episodes, errors = import_file(path)
    assert not errors and len(episodes) == n, errors
    outcomes = out / f"{fmt}_outcomes.jsonl"
    lines = []
    for e in episodes:  # the id each format names an episode by in its source: what an outcomes file refers to
        city = QUESTION.search(e.task).group(1)
        lines.append(json.dumps({"id": e.task_id.split("/", 1)[1], "label": "fail", "expected": gold_answer(city)}))
    outcomes.write_text("\n".join(lines) + "\n")
    return path, outcomes


def _unique(fragment: str, k: int) -> str:
    """The fragment for copy `k`, same shape: a hex id gets k as its first digit, else a digit or suffix."""
    if re.fullmatch(r"[0-9a-f]+", fragment):
        return f"{k:x}" + fragment[1:]
    return fragment.replace("0", str(k), 1) if "0" in fragment else f"{fragment}{k}"


def helpdesk_trace(path: Path, tasks: list[tuple[str, int]]) -> Path:
    """OpenAI chat JSONL of help-desk failures (half the amount refunded), each recording its task id."""
    from evaluation.environments.examples.helpdesk import TOOLS, HelpDesk, HelpDeskEpisode
    from r2w.environment import TaskSpec

    desk, lines = HelpDesk(), []
    for i, (split, seed) in enumerate(tasks):
        env = HelpDeskEpisode(desk.max_orders)
        ask = env.reset(TaskSpec("helpdesk", "refund", split, seed)).messages[0].content
        order = env.target
        amount = env.orders[order]["amount"]
        looked = json.dumps(env.orders[order])

        def call(cid: str, name: str, args: dict) -> dict:
            return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

        messages = [
            {"role": "user", "content": ask},
            {"role": "assistant", "content": None, "tool_calls": [call("c0", "lookup_order", {"order_id": order})]},
            {"role": "tool", "tool_call_id": "c0", "content": looked},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("c1", "refund", {"order_id": order, "amount": amount / 2})],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
            {"role": "assistant", "content": "Refunded half."},
        ]
        lines.append(
            {
                "id": f"desk-{i}",
                "created_at": f"2026-11-1{i % 10}T10:00:00Z",
                "label": "fail",
                "metadata": {"env": "helpdesk", "task_id": f"helpdesk/refund/{split}/{seed}"},
                "tools": TOOLS,
                "messages": messages,
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# ------------------------------------------------------ answers of the fake teacher (tests/fake_openai.py)


def weather_teacher(messages: list[dict]) -> str:
    """Answers the weather question the way the gold data expects (no tool needed)."""
    city = next(QUESTION.search(m["content"]).group(1) for m in messages if m["role"] == "user")
    return gold_answer(city)


def desk_teacher(messages: list[dict]) -> str:
    """Looks the order up, refunds its full amount, then answers: the help desk solved."""
    ask = next(m["content"] for m in messages if m["role"] == "user")
    order = ask.split("order ")[1].split(" ")[0]
    replies = [m["content"] for m in messages if m["role"] == "user" and "<tool_response" in m["content"]]
    assistant_turns = sum(m["role"] == "assistant" for m in messages)
    if assistant_turns == 0:
        return _call("lookup_order", {"order_id": order})
    if assistant_turns == 1:
        amount = json.loads(re.search(r"\{[^{}]*\"amount\"[^{}]*\}", replies[-1]).group(0))["amount"]
        return _call("refund", {"order_id": order, "amount": amount})
    return "Refunded in full."


def _call(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"
