"""DSPy language models for the hint extractor: an OpenAI-compatible server, or our own backend.

The in-process path implements DSPy 3.4's engine contract (`complete(Request) -> Response`),
so DSPy keeps owning caching, retries, history and adapters while generation runs through the
same `GenerationBackend` the rollouts use (no second copy of the model in memory).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import json_repair

from r2w.backends.base import GenerationBackend, SamplingParams
from r2w.config import ExtractorConfig
from r2w.contracts import Message
from r2w.credentials import api_key

if TYPE_CHECKING:  # dspy reads its cache settings at import: import it only after configure_environment
    import dspy
    from dspy.lm15 import Request, Response

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "user"}


# A lesson line as the hint parser and screen expect it (prompts/hints.py), short enough for hints.max_chars.
HINT_LINE = r"^WHEN [^:\n]{3,70}: [^\n]{3,110}$"


def hint_lines_schema(field: str = "hints", most: int = 4) -> dict:
    """JSON schema of 1..`most` lesson lines: decoding to it makes a weak model's reply parse, whatever it says."""
    line = {"type": "string", "pattern": HINT_LINE}
    items = {"type": "array", "items": line, "minItems": 1, "maxItems": most}
    return {"type": "object", "properties": {field: items}, "required": [field], "additionalProperties": False}


class BackendEngine:
    """A DSPy engine that answers each request with one `GenerationBackend.generate` call.

    `constrain_field`: decode the reply to `hint_lines_schema` (xgrammar, on backends that decode to JSON
    schemas) and hand it to DSPy in its chat adapter's field format. Why: the 135M model never wrote a parseable
    `WHEN ...: ...` line unconstrained (RESULTS 3.11); this fixes the format, not the content.
    """

    def __init__(self, backend: GenerationBackend, default_max_tokens: int = 160, constrain_field: str = "") -> None:
        self.backend = backend
        self.default_max_tokens = default_max_tokens
        self.constrain_field = constrain_field if getattr(backend, "constrains_json", False) else ""

    def complete(self, request: Request) -> Response:
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import Message as LMMessage
        from dspy.lm15 import Response, TextPart, Usage

        validate_request(request)
        cfg = request.config
        max_tokens = cfg.max_tokens or self.default_max_tokens
        params = SamplingParams(
            n=1,
            temperature=cfg.temperature or 0.0,
            top_p=cfg.top_p if cfg.top_p is not None else 1.0,
            max_tokens=max_tokens,
            seed=cfg.seed or 0,
            stop=tuple(cfg.stop),
        )
        if self.constrain_field:
            schema = json.dumps(hint_lines_schema(self.constrain_field))
            completion = self.backend.generate([request_messages(request)], params, schemas=[schema])[0]
            text, stopped = as_adapter_fields(completion.texts[0], self.constrain_field), True
        else:
            completion = self.backend.generate([request_messages(request)], params)[0]
            text, stopped = _apply_stop(completion.texts[0], cfg.stop)
        n_out = completion.completion_tokens[0] if completion.completion_tokens else 0
        finish = "stop" if stopped or n_out < max_tokens else "length"
        return Response(
            id=None,
            model=request.model,
            message=LMMessage.assistant([TextPart(text)]),
            finish_reason=finish,
            usage=Usage(input_tokens=completion.prompt_tokens, output_tokens=n_out),
        )

    def stream(self, request: Request):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The backend is borrowed: its owner closes it."""


def as_adapter_fields(reply: str, field: str) -> str:
    """A schema-decoded JSON reply as DSPy's chat adapter writes fields. A reply cut at max_tokens is repaired
    (json_repair, a maintained library) and keeps only its complete lines; with none, it stays as it is."""
    try:
        lines = json_repair.loads(reply)[field]
    except (ValueError, KeyError, TypeError):
        return reply
    whole = [line for line in lines if isinstance(line, str) and re.fullmatch(HINT_LINE, line)]
    if not whole:
        return reply
    return f"[[ ## {field} ## ]]\n" + "\n".join(whole) + "\n\n[[ ## completed ## ]]"


def request_messages(request: Request) -> list[Message]:
    """Flatten a DSPy request into our chat messages (system first, text parts only)."""
    from dspy.lm15 import TextPart

    out: list[Message] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        out.append(Message(role="system", content=system))
    for m in request.messages:
        text = "\n".join(p.text for p in m.parts if isinstance(p, TextPart))
        out.append(Message(role=_ROLES.get(m.role, "user"), content=text))
    return out


def _apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Transformers' generate ignores stop strings here; cut at the first one afterwards."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def make_extractor_lm(
    cfg: ExtractorConfig,
    backend: GenerationBackend | None,
    model_name: str,
    cache_dir: str | Path | None = None,
) -> dspy.LM:
    """The extractor's LM: 'openai' talks to cfg.url, 'local' wraps `backend` in-process (greedy).

    `model_name` is part of DSPy's cache key: make it identify the weights (e.g. name + adapter
    hash), or a cached answer from other weights is reused. The disk cache goes to `cache_dir`,
    else to $DSPY_CACHEDIR (set under the data dir by `configure_environment`).
    """
    import dspy

    cache_dir = cache_dir or os.environ.get("DSPY_CACHEDIR")
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        dspy.configure_cache(enable_disk_cache=True, disk_cache_dir=str(cache_dir))
    if cfg.lm == "openai":
        if not cfg.url:
            raise ValueError("hints.extractor.url is required when hints.extractor.lm is 'openai'")
        model = cfg.model or model_name
        # LiteLLM wants some key; a local server ignores it
        key = api_key("hints.extractor.api_key_env", cfg.api_key_env) or "unused"
        return dspy.LM(  # DSPy's cache key leaves api_key out; LiteLLM retries 429/5xx with backoff
            f"openai/{model}",
            api_base=cfg.url,
            api_key=key,
            num_retries=cfg.max_retries,
            max_tokens=cfg.max_tokens,
            temperature=0.0,
        )
    if backend is None:
        raise ValueError("hints.extractor.lm is 'local' but no generation backend was given")
    engine = BackendEngine(backend, cfg.max_tokens, "hints" if cfg.constrain_format else "")
    name = f"{model_name}+lines" if engine.constrain_field else model_name  # DSPy's cache: other decoding, other key
    return dspy.LM(f"local/{name}", engine=engine, max_tokens=cfg.max_tokens, temperature=0.0)
