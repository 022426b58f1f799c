"""`FakeOpenAIServer`: the tests' one fake of an OpenAI-compatible chat server (teacher, extractor, judge).

No hosted model can be reached from here, so the code paths that talk to one (r2w/backends/openai_server.py,
DSPy's LM, the judge verifier) run over real sockets against this loopback server. It is named a fake: what
it answers is decided by the test (`answer(messages)`), not by a model. It serves `GET .../models` and
`POST .../chat/completions`, records every request (headers and body), and can answer the first
`fail_first` requests with `fail_status` (a 429 carries `Retry-After: 0`) so that retry paths run too.

Requests with `tools` and `tool_choice: "auto"` are answered as vLLM answers them: refused with HTTP 400 unless the
fake was made with `tool_parser=True` (vLLM's `--enable-auto-tool-choice --tool-call-parser hermes`); then each
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block of the answer comes back as a parsed
`message.tool_calls` entry (arguments as JSON text, ids `chatcmpl-tool-<n>`), the rest as `content`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[list[dict]], str]


@dataclass(frozen=True)
class Request:
    """One chat-completions request as the server received it."""

    headers: dict[str, str]
    body: dict

    @property
    def auth(self) -> str:
        return self.headers.get("Authorization", "")

    @property
    def last_user_message(self) -> str:
        return self.body["messages"][-1]["content"]


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def hermes_parsed(text: str) -> dict:
    """The reply message a vLLM server with the hermes tool parser returns for `text` (a fake of that parser; a
    block that is not JSON stays in the content, as vLLM leaves it)."""
    calls, rest = [], text
    for i, block in enumerate(_CALL.findall(text)):
        try:
            payload = json.loads(block)
        except json.JSONDecodeError:
            continue
        arguments = json.dumps(payload.get("arguments", {}))
        calls.append({"id": f"chatcmpl-tool-{i}", "type": "function",
                      "function": {"name": payload["name"], "arguments": arguments}})  # fmt: skip
        rest = rest.replace(f"<tool_call>{block}</tool_call>", "")
    return {"role": "assistant", "content": rest.strip() or None, "tool_calls": calls}


class FakeOpenAIServer:
    """Loopback OpenAI chat server; every choice of a request is `answer(request messages)`.

    Use as a context manager, or call `close()`. `fail_first`/`fail_status`/`echo_key_in_errors` may be set
    after construction (the next requests see them).
    """

    def __init__(
        self,
        answer: Answer = lambda _messages: "ok",
        model: str = "fake-model",
        fail_first: int = 0,
        fail_status: int = 429,
        echo_key_in_errors: bool = False,
        tool_parser: bool = False,
    ) -> None:
        self.answer, self.model, self.tool_parser = answer, model, tool_parser
        self.fail_first, self.fail_status, self.echo_key_in_errors = fail_first, fail_status, echo_key_in_errors
        self.requests: list[Request] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, headers: dict[str, str], body: dict) -> tuple[int, dict, dict]:
        """(status, JSON payload, extra headers) for one POST."""
        self.requests.append(Request(headers, body))
        if len(self.requests) <= self.fail_first:
            key = headers.get("Authorization", "").removeprefix("Bearer ")
            detail = f"rate limited; key {key}" if self.echo_key_in_errors else "rate limited"
            return self.fail_status, {"error": {"message": detail}}, {"Retry-After": "0"}
        if body.get("tool_choice") == "auto" and not self.tool_parser:  # vLLM's words
            detail = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            return 400, {"error": {"message": detail}}, {}
        message = {"role": "assistant", "content": self.answer(body.get("messages", []))}
        if body.get("tools") and self.tool_parser:
            message = hermes_parsed(message["content"])
        n = int(body.get("n", 1) or 1)
        choices = [{"index": i, "message": message, "finish_reason": "stop"} for i in range(n)]
        usage = {"prompt_tokens": 11, "completion_tokens": 3 * n, "total_tokens": 11 + 3 * n}
        return 200, {"id": "fake", "object": "chat.completion", "choices": choices, "usage": usage}, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(*server.reply(dict(self.headers), body))

        return Handler

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
