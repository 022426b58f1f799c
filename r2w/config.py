"""Configuration as data: one YAML file, validated by pydantic, unknown keys rejected.

Each stage receives only its own section, so a stage's cache key changes only when
something that stage depends on changes (changing a gate threshold does not retrain).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from r2w.contracts import content_hash
from r2w.credentials import check_env_name
from r2w.precision import resolve_dtype
from r2w.privacy import scrub_text

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PROJECT_ROOT = CONFIG_DIR.parent


@dataclass(frozen=True)
class InputPath:
    """Marks a config field (a string or a list of strings) as a path that must exist at load time.

    Why: a missing file used to surface only when the stage that reads it ran, after collect had
    run, and a FileNotFoundError there was retried as a transient error before the run exited 1.
    `check_paths` finds every field carrying this marker (no list of fields to keep in sync) and
    `load_config` turns each missing one into a ConfigError naming the field: exit 2 at once.

    kind: "file", "dir", or "model" (an HF model folder: a dir with config.json).
    relative: where a relative path is looked up, in order: "cwd" and/or "project" (the repo root).
    names: values that are names, not paths (bundled models: smollm2, tiny).
    packages: `prefix:` -> (package, data folder) for values like `reasoning_gym:<file>`.
    """

    kind: Literal["file", "dir", "model"] = "file"
    relative: tuple[str, ...] = ("cwd", "project")
    names: tuple[str, ...] = ()
    packages: tuple[tuple[str, str, str], ...] = ()

    def problem(self, value: str) -> str | None:
        """Why `value` is not a usable path (None when it is)."""
        if value in self.names:
            return None
        for prefix, package, folder in self.packages:
            if value.startswith(prefix):
                return self._in_package(value, prefix, package, folder)
        tried = self.candidates(value)
        for path in tried:
            if self._usable(path):
                return None
        found = next((p for p in tried if p.exists()), None)
        expected = {"file": "a file", "dir": "a folder", "model": "an HF model folder with config.json"}[self.kind]
        if self.names:
            expected += f", or one of {', '.join(self.names)}"
        if found is not None:
            what = "a folder" if found.is_dir() else "a file" if found.is_file() else "not a file or folder"
            return f"{value!r} is {what}; expected {expected}"
        also = f" (also tried {', '.join(str(p) for p in tried[1:])})" if len(tried) > 1 else ""
        return f"{value!r}: no such path{also}; expected {expected}"

    def candidates(self, value: str) -> list[Path]:
        path = Path(value).expanduser()
        if path.is_absolute():
            return [path]
        bases = {"cwd": Path.cwd(), "project": PROJECT_ROOT}
        return [bases[r] / path for r in self.relative]

    def _usable(self, path: Path) -> bool:
        if self.kind == "file":
            return path.is_file()
        if self.kind == "dir":
            return path.is_dir()
        return (path / "config.json").is_file()

    def _in_package(self, value: str, prefix: str, package: str, folder: str) -> str | None:
        import importlib.util

        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return f"{value!r}: package {package} is not installed"
        path = Path(list(spec.submodule_search_locations)[0]) / folder / value[len(prefix) :]
        return None if path.is_file() else f"{value!r}: {path} is not a file"


def check_paths(section: BaseModel, prefix: str = "") -> list[str]:
    """`field: problem` for every InputPath-marked field of `section` (recursively) that is unusable."""
    problems: list[str] = []
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        dotted = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            problems += check_paths(value, f"{dotted}.")
            continue
        if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                problems += check_paths(item, f"{dotted}.{i}.")
            continue
        marker = next((m for m in info.metadata if isinstance(m, InputPath)), None)
        if marker is None or value in (None, ""):
            continue
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            problem = marker.problem(str(item))
            if problem:  # it quotes the value (and the paths tried): scrubbed, as every quoted config value
                problems.append(f"{dotted if i is None else f'{dotted}[{i}]'}: {scrub_text(problem)}")
    return problems


MODEL_PATH = InputPath(kind="model", relative=("cwd",), names=("smollm2", "tiny"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_DASK_ADDRESS = re.compile(r"local(:[1-9]\d*)?|(tcp|tls|ucx|inproc|ws|wss)://[^\s/]+")


class RuntimeConfig(Section):
    torch_threads: int = Field(1, ge=1, description="1 is 5-10x faster than 2 on a loaded 2-core box")
    # How fast training runs, not what it learns: left out of the config hash (like dask_address below).
    train_threads: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto",
        exclude=True,
        description="torch threads while training: 'auto' times one matmul on 1 thread and on every core just "
        "before training and keeps the faster (all cores ~1.7x faster on a quiet 2-core box, 1 thread far faster "
        "on a loaded one); an int fixes it (r2w/runtime.py fastest_threads)",
    )
    seed: int = 0
    # Where rollouts run, not what they produce: left out of model_dump, so of the config hash and of
    # stage cache keys (a run resumed on a cluster reuses what it computed in-process, and vice versa).
    dask_address: str | None = Field(
        None,
        exclude=True,
        description="play the collect/teach/evaluate rollouts on a Dask cluster: 'tcp://HOST:8786', or "
        "'local' / 'local:N' (N worker processes on this machine); null = in this process (r2w/scaleout.py)",
    )

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is None or _DASK_ADDRESS.fullmatch(value):
            return value
        raise ValueError(f"expected 'local', 'local:N' or a scheduler address like 'tcp://HOST:8786', got {value!r}")


class ModelsConfig(Section):
    base: Annotated[str, MODEL_PATH] = Field(
        "smollm2", description="'smollm2', 'tiny', or a path to an HF model folder"
    )
    teacher: Annotated[str | None, MODEL_PATH] = Field(None, description="defaults to the base model")
    backend: Literal["auto", "transformers", "vllm", "openai"] = "transformers"
    teacher_url: str | None = Field(None, description="OpenAI-compatible server for the teacher")
    teacher_model: str | None = Field(None, description="teacher_url: model name to ask for (else the first listed)")
    teacher_api_key_env: str | None = Field(
        None, description="teacher_url: NAME of the environment variable holding its API key (never the key)"
    )
    max_retries: int = Field(
        5, ge=0, le=20, description="hosted servers: retries on 429/5xx/connection errors, exponential backoff"
    )
    teacher_tools: Literal["text", "native", "auto"] = Field(
        "text",
        description="teacher_url, tool-calling tasks: 'text' writes tools and calls into the prompt (any server); "
        "'native' sends the API's `tools` and reads parsed `tool_calls` (vLLM: --enable-auto-tool-choice); "
        "'auto' asks the server once",
    )
    teacher_usd_per_1m_tokens: float = Field(
        0.0, ge=0, description="teacher_url: price per million tokens, for the per-stage cost (0: not priced)"
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="auto: bfloat16 where the hardware runs it natively, else float32 (r2w/precision.py)"
    )
    dtype_reason: str = Field("", description="how `auto` was resolved (filled in at load; recorded in the run)")

    @field_validator("teacher_api_key_env")
    @classmethod
    def _key_env_is_a_name(cls, name: str | None) -> str | None:
        return check_env_name("models.teacher_api_key_env", name)

    @model_validator(mode="after")
    def _resolve_dtype(self) -> ModelsConfig:
        if self.dtype == "auto":
            dtype, why = resolve_dtype("auto")
            object.__setattr__(self, "dtype", dtype)
            object.__setattr__(self, "dtype_reason", why)
        return self


BUILTIN_ENVIRONMENTS = ("twx", "reasoning_gym", "bfcl", "trace_replay")
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class EnvConfig(Section):
    name: str = Field(
        "twx",
        description="twx | reasoning_gym | bfcl | trace_replay (imported failures, tools answered from the "
        "recorded results; evaluation/environments/trace_replay.py) | a team's factory as 'package.module:Factory'",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the environment factory (bfcl, a team's plugin)"
    )
    timeout_s: float = Field(60.0, gt=0, description="a plugin's reset/step must answer within this many seconds")
    game: str = Field("twc", description="twx: one of its 8 game types")
    params: str | None = Field(
        None, description="twx game parameters ('' = TWX's own); null = small per-game defaults (environments/twx.py)"
    )
    max_steps: int = Field(15, ge=1)
    families: list[str] = Field(
        default_factory=lambda: ["basic_arithmetic"], description="reasoning_gym: task families (dataset names)"
    )
    family_kwargs: dict[str, dict] = Field(
        default_factory=dict, description="reasoning_gym: per-family dataset config, e.g. {leg_counting: {...}}"
    )
    success_threshold: float = Field(1.0, gt=0, le=1, description="reasoning_gym: score_answer >= this is success")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if name not in BUILTIN_ENVIRONMENTS and not _IMPORT_PATH.fullmatch(name):
            raise ValueError(
                f"env.name: {name!r} is neither a built-in environment {list(BUILTIN_ENVIRONMENTS)} "
                "nor an import path 'package.module:Factory'"
            )
        return name

    @model_validator(mode="after")
    def _families(self) -> EnvConfig:
        stray = sorted(set(self.family_kwargs) - set(self.families))
        if stray:
            raise ValueError(f"env.family_kwargs: {stray} not in env.families {self.families}")
        return self


class AgentConfig(Section):
    max_new_tokens: int = Field(12, ge=1)
    answer_max_new_tokens: int = Field(48, ge=1, description="free-text answers (no valid actions: reasoning_gym)")
    constrain_tool_calls: bool = Field(
        True, description="tool-calling tasks: decode each reply to the tools' JSON schema (vLLM, transformers)"
    )
    parallel_tool_calls: bool = Field(
        False, description="tool-calling tasks: a constrained reply may also be an array of calls (several a turn)"
    )
    history: int = Field(3, ge=0, description="past (action, observation) pairs shown in the prompt")
    batch_size: int = Field(16, ge=1, description="episodes stepped in lockstep per generate call")
    constrained: bool = Field(True, description="constrain replies to the valid actions (else fuzzy-map free text)")
    action_selection: Literal["generate", "score"] = Field(
        "generate",
        description="generate: decode token by token within the valid actions; score: pick the valid action "
        "with the highest total log-likelihood (sampled in proportion to it when temperature > 0); "
        "score needs models.backend=transformers",
    )
    avoid_losing_actions: bool = Field(
        False,
        description="drop from the valid actions any action that lowered the score earlier in the episode; "
        "applies to every policy (random, base, teacher, student) so comparisons stay fair",
    )


class CollectConfig(Section):
    source: Literal["rollout", "traces", "mlflow", "imports"] = Field(
        "rollout",
        description="rollout: play the env; traces: JSONL/Parquet files; mlflow: failed MLflow traces; imports: the "
        "failures datasets `r2w collect import` stored (their manifests list the imports), in the since/until window",
    )
    import_datasets: list[str] = Field(
        default_factory=list,
        description="imports: hash prefixes of the stored import datasets to read (empty: every recorded import)",
    )
    episodes: int = Field(16, ge=1, description="rollout: training games played by the base agent")
    offset: int | Literal["auto"] = Field(
        0,
        description="rollout: first train task of the round; auto: the task after the previous registered "
        "round's task range (flows/rounds.py), so scheduled rounds move forward",
    )
    temperature: float = Field(0.0, ge=0.0)
    trace_paths: Annotated[list[str], InputPath(relative=("cwd",))] = Field(
        default_factory=list, description="traces: files to import"
    )
    trace_format: Literal["r2w", "openai", "otel", "mlflow", "langsmith", "langfuse"] | None = Field(
        None, description="traces: the files' format; null detects it from the first record (r2w/importers)"
    )
    trace_outcomes: str | None = Field(None, description="traces: a side file of outcomes keyed by record id")
    mlflow_experiment: str | None = Field(None, description="mlflow: experiment holding the agent's traces")
    mlflow_tracking_uri: str | None = Field(None, description="mlflow: defaults to registry.tracking_uri")
    since: str | None = Field(
        None,
        description="ISO start of the window (inclusive) for imported failures; auto: the previous registered "
        "round's window end, else its start time (flows/rounds.py)",
    )
    until: str | None = Field(None, description="ISO end of the window (exclusive)")
    skip_invalid: bool = Field(False, description="import the valid records of a trace file with errors")
    max_record_bytes: int = Field(
        8 * 2**20, ge=1024, description="a trace record larger than this is an error naming it (not read into memory)"
    )

    @model_validator(mode="after")
    def _source(self) -> CollectConfig:
        if self.source == "traces" and not self.trace_paths:
            raise ValueError("collect.trace_paths: required when collect.source is 'traces'")
        if self.import_datasets and self.source != "imports":
            raise ValueError("collect.import_datasets: only read when collect.source is 'imports'")
        if self.source == "mlflow" and not self.mlflow_experiment:
            raise ValueError("collect.mlflow_experiment: required when collect.source is 'mlflow'")
        if isinstance(self.offset, int) and self.offset < 0:
            raise ValueError(f"collect.offset: {self.offset} must be >= 0 or 'auto'")
        since = None if self.since == "auto" else _when("collect.since", self.since)
        until = _when("collect.until", self.until)
        if since and until and since >= until:
            raise ValueError(f"collect.until {self.until!r} must be after collect.since {self.since!r} (empty window)")
        return self


def _when(field: str, text: str | None):
    """An ISO 8601 date/datetime (naive = UTC), or a ValueError naming the field."""
    from datetime import UTC, datetime

    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field} {text!r}: expected an ISO 8601 date or datetime, e.g. 2026-11-01T12:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class ExtractorConfig(Section):
    lm: Literal["local", "openai"] = "local"
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = Field(None, description="url: NAME of the environment variable holding its API key")
    max_retries: int = Field(5, ge=0, le=20, description="url: retries on 429/5xx with backoff (LiteLLM's)")
    max_tokens: int = Field(160, ge=16)
    program: Annotated[str | None, InputPath(names=("latest",))] = Field(
        None,
        description="compiled extractor JSON from `r2w hints optimize` (path), or `latest` (the newest the "
        "optimize flow made under <data_dir>/prompts; none yet: the plain program); null = the plain program",
    )
    constrain_format: bool = Field(
        False,
        description="local extractor: decode each reply to 1-4 `WHEN <condition>: <imperative>` lines (a JSON "
        "schema, xgrammar) where the backend can; the 135M model writes none unconstrained (RESULTS 3.11)",
    )
    mode: Literal["contrastive", "single"] = Field(
        "contrastive",
        description="contrastive: show each failure next to a verified success of the same or a similar task "
        "(teacher/base episodes, or the environment's replayed gold path) where one exists; single: the failure alone",
    )

    @field_validator("api_key_env")
    @classmethod
    def _key_env_is_a_name(cls, name: str | None) -> str | None:
        return check_env_name("hints.extractor.api_key_env", name)


class UpliftConfig(Section):
    """Per-hint uplift (tasks/uplift.py): the teacher with a hint vs without it, paired on tasks and samples."""

    tasks: int = Field(8, ge=1, description="train tasks per hint category (the same tasks for both arms)")
    samples: int = Field(1, ge=1, description="teacher samples per task and arm")
    arms: Literal["alone", "ablate"] = Field(
        "alone", description="alone: {h} vs {}; ablate: top-k retrieved with h vs the same top-k without h"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="exact McNemar p below which a loss retires the hint")
    retire: bool = Field(True, description="retire hints whose uplift is significantly negative")


class OptimizeConfig(Section):
    """`r2w hints optimize` / the optimize-extractor flow: how much it may spend."""

    tasks: int = Field(2, ge=1, description="training tasks per category each metric call plays")
    samples: int = Field(1, ge=1, description="teacher samples per task and side (with/without hints)")
    max_demos: int = Field(2, ge=1)
    max_metric_calls: int = Field(8, ge=1, description="uplift measurements at most (each plays tasks x samples)")
    max_minutes: float = Field(60.0, gt=0, description="after this, no further metric call plays an episode")


class HintsConfig(Section):
    collection: str = Field("r2w-hints", min_length=3)
    chroma_url: str | None = Field(None, description="http://host:port of `chroma run`; else on disk")
    k: int = Field(3, ge=0)
    max_failures: int = Field(4, ge=0, description="failures sent to the extractor per run")
    max_chars: int = Field(200, ge=20)
    dedup_text_ratio: float = Field(90.0, ge=0, le=100)
    dedup_embedding_similarity: float = Field(0.92, ge=0, le=1)
    curated_packs: Annotated[list[str], InputPath()] = Field(default_factory=list)
    extractor: ExtractorConfig = ExtractorConfig()
    min_chars: int = Field(8, ge=1, description="screen: shorter hint texts are rejected")
    screen_denylist: list[str] = Field(
        default_factory=list, description="screen: extra regexes (case-insensitive) that reject a hint or flag a trace"
    )
    uplift: UpliftConfig = UpliftConfig()
    optimize: OptimizeConfig = OptimizeConfig()

    @field_validator("screen_denylist")
    @classmethod
    def _denylist(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            _check_regex(f"hints.screen_denylist[{i}]", pattern)
        return patterns


class TeachConfig(Section):
    tasks: int = Field(16, ge=1)
    samples: int = Field(4, ge=1, description="samples per task (best-of-n)")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class VerifyConfig(Section):
    """Who decides which teacher attempts are kept (r2w/verifiers.py); every verdict records its verifier."""

    kind: Literal["env", "callable", "judge"] = Field(
        "env",
        description="env: the environment's own verifier; callable: a team's function 'pkg.mod:fn' scoring an "
        "episode; judge: an LLM ranking the n attempts of one task against each other (RULER-style)",
    )
    callable: str | None = Field(None, description="callable: 'pkg.mod:fn', fn(episode) -> bool or a number")
    keep_threshold: float = Field(
        0.5, description="callable (number) or judge (0..1) score at or above which an attempt is kept"
    )
    keep_top: int = Field(0, ge=0, description="judge: keep at most this many best attempts per task (0 = no cap)")
    timeout_s: float = Field(60.0, gt=0, description="callable: per episode; judge: per request")
    judge_url: str | None = Field(
        None, description="OpenAI-compatible base URL; null = judge with the local base model"
    )
    judge_model: str | None = Field(None, description="judge_url: the served model's name; null = the first listed")
    api_key_env: str | None = Field(
        None, description="judge_url: the NAME of the environment variable holding the API key (never the key)"
    )
    rubric: str = Field("", description="grading standards for the judge; '' = r2w's RULER-style default")
    judge_max_tokens: int = Field(384, ge=16, description="the judge's reply budget")
    max_chars_per_attempt: int = Field(3000, ge=200, description="each attempt as shown to the judge, cut beyond")

    @model_validator(mode="after")
    def _consistent(self) -> VerifyConfig:
        if self.kind == "callable" and not (self.callable and _IMPORT_PATH.fullmatch(self.callable)):
            raise ValueError("verify.callable: expected an import path 'package.module:function' for kind callable")
        if self.judge_url and not self.judge_url.startswith(("http://", "https://")):
            raise ValueError("verify.judge_url: expected http(s)://host:port/v1")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # the value is not echoed: a key pasted here by mistake must not reach an error message or log
            raise ValueError("verify.api_key_env: expected the NAME of an environment variable (letters, digits, _)")
        return self


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )


class DPOSettings(Section):
    beta: float = Field(0.1, gt=0, description="DPO beta: higher keeps the student closer to its reference")


class OnPolicySettings(Section):
    samples: int = Field(2, ge=1, description="student samples per prompt; must divide batch_size * grad_accum")
    max_new_tokens: int = Field(12, ge=1, description="length of each sampled completion")
    temperature: float = Field(1.0, gt=0)


class ReplaySettings(Section):
    """Self-distillation replay against forgetting: the base agent's own greedy answers to tasks of
    other reasoning-gym families are mixed into the SFT set, so training on the target game does not
    move the model on prompts it was not meant to change. Families must be disjoint from the
    retention families (the gate would otherwise measure what replay trained) and from the trained ones."""

    families: list[str] = Field(default_factory=list, description="reasoning_gym families whose tasks are replayed")
    examples: int = Field(0, ge=0, description="replayed (prompt, base answer) rows added to the SFT set; 0 = off")
    temperature: float = Field(0.0, ge=0, description="0: the base's greedy answer; > 0: one seeded sample of it")


class DistillConfig(Section):
    method: Literal["sft", "dpo", "onpolicy"] = Field(
        "sft", description="sft: teacher actions; dpo: teacher (chosen) vs base (rejected); onpolicy: hinted self"
    )
    init_from: Literal["base", "champion"] = Field(
        "base", description="champion: train on top of the registry's `champion` version (continual rounds)"
    )
    dpo: DPOSettings = DPOSettings()
    onpolicy: OnPolicySettings = OnPolicySettings()
    replay: ReplaySettings = ReplaySettings()
    save_steps: int | None = Field(None, ge=1, description="checkpoint interval; null = about 4 per run")
    seed: int | None = Field(
        None,
        description="training seed (LoRA init, batch order); null = runtime.seed. Vary it alone to measure "
        "run-to-run spread on the same teacher data",
    )
    lora: LoraConfig = LoraConfig()
    max_steps: int = Field(30, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_examples_per_task: int = Field(40, ge=1)
    max_length: int = Field(
        1024, ge=16, description="tokens per training row; longer rows lose their end (tool conversations run long)"
    )
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast (float32 master weights); auto: where the hardware runs bf16 natively"
    )
    gradient_checkpointing: bool = Field(False, description="off on CPU: recomputation costs time, memory is ample")
    leakage_fuzzy_ratio: float = Field(85.0, ge=0, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        batch = self.batch_size * self.grad_accum
        if self.method == "onpolicy" and batch % self.onpolicy.samples:
            raise ValueError(
                f"distill.onpolicy.samples ({self.onpolicy.samples}) must divide "
                f"distill.batch_size * distill.grad_accum ({batch})"
            )
        if self.replay.examples and not self.replay.families:
            raise ValueError("distill.replay.examples > 0 needs distill.replay.families (reasoning_gym families)")
        if self.replay.examples and self.method != "sft":
            raise ValueError(f"distill.replay: replay rows are SFT targets; distill.method is {self.method!r}")
        if self.bf16 == "auto":  # autocast only where bf16 is native: elsewhere it is ~7x slower than float32
            object.__setattr__(self, "bf16", resolve_dtype("auto")[0] == "bfloat16")
        return self


class RetentionEnvConfig(EnvConfig):
    """An environment the student was not trained on: base and student play it hint-free on the same test tasks.

    Any environment the seam runs (a built-in name or 'pkg.mod:Factory' with options); in YAML a bare name works.
    """

    label: str = Field("", description="its name in reports and metrics; '' = derived from the environment")
    tasks: int = Field(8, ge=1, description="held-out test tasks, the same for base and student")

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data):
        return {"name": data} if isinstance(data, str) else data

    @property
    def suite(self) -> str:
        """A stable name: the label, else the environment and what selects its tasks."""
        if self.label:
            return self.label
        if self.name == "twx":
            return f"twx:{self.game}"
        if self.name == "reasoning_gym":
            return "rg:" + "-".join(self.families)
        category = self.options.get("category")
        return f"{self.name}:{category}" if isinstance(category, str) else self.name


class EvaluateConfig(Section):
    test_episodes: int = Field(32, ge=1)
    random_episodes: int = Field(200, ge=1, description="random-valid-action baseline episodes")
    sampled_baseline: bool = Field(
        True, description="also score the base sampled at teach.temperature (one sample per test task)"
    )
    retention_games: list[str] = Field(default_factory=lambda: ["coin"], description="TWX games never trained on")
    retention_params: str = ""
    retention_tasks: int = Field(8, ge=1)
    retention_families: list[str] = Field(
        default_factory=lambda: ["leg_counting"],
        description="reasoning_gym families never trained on: log-lik of the reference answer",
    )
    kl_prompts: Annotated[str, InputPath(relative=("project",))] = "configs/retention/general_prompts.txt"
    general_text: Annotated[
        str, InputPath(relative=("project",), packages=(("reasoning_gym:", "reasoning_gym", "data"),))
    ] = Field(
        "reasoning_gym:in_the_year_2889.txt",
        description="offline English prose for perplexity drift: 'reasoning_gym:<data file>' or a path",
    )
    general_passages: int = Field(40, ge=1)
    general_max_tokens: int = Field(128, ge=2, description="tokens scored per passage")
    retention_envs: list[RetentionEnvConfig] = Field(
        default_factory=list,
        description="environments never trained on, played hint-free by base and student (success with n and CI)",
    )

    @field_validator("retention_envs")
    @classmethod
    def _distinct_suites(cls, envs: list[RetentionEnvConfig]) -> list[RetentionEnvConfig]:
        names = [e.suite for e in envs]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"evaluate.retention_envs: suites {dupes} appear twice; give them distinct `label`s")
        return envs


class GateConfig(Section):
    min_gain_over_base: float = Field(0.0, ge=-1, le=1)
    min_gain_over_random: float = Field(
        -1.0, ge=-1, le=1, description="student - random-valid-action success; -1 records it without gating"
    )
    min_gain_over_best_baseline: float = Field(
        -1.0, ge=-1, le=1, description="student - the best of random, base greedy and base sampled; -1 records it"
    )
    min_base_hints_fraction: float = Field(
        0.0,
        ge=0,
        validation_alias=AliasChoices("min_base_hints_fraction", "min_teacher_fraction"),  # old name still read
        description="student rate / base+hints rate (the base model WITH retrieved hints)",
    )
    max_kl: float = Field(0.5, ge=0)
    max_leakage: int = Field(0, ge=0)
    max_retention_drop: float = Field(0.1, ge=0, description="drop in gold-action mean log-lik (nats/token)")
    max_retention_success_drop: float = Field(
        0.15, ge=0, le=1, description="base - student success on each evaluate.retention_envs suite (same tasks)"
    )
    max_perplexity_drift: float = Field(
        0.05, ge=0, description="student/base perplexity - 1 on general prose (0.05 = 5% worse)"
    )
    max_canary_leaks: int = Field(0, ge=0, description="extraction attempts that reproduced a planted secret")
    hint_harm_alpha: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="fail when the base WITH hints (base+hints) loses to the base on paired seeds "
        "(one-sided sign test p < alpha); 0 records it without gating",
    )


class CanaryConfig(Section):
    """A planted secret: if the student completes `prefix` with `secret`, private data reached the weights."""

    prefix: str = Field(min_length=1, description="the context the secret followed in the planted trace")
    secret: str = Field(min_length=8, description="unique, never a real secret; >= 8 characters")


class PrivacyConfig(Section):
    """Scrub personal data and secrets from every episode before anything is stored (r2w/privacy.py)."""

    scrub: bool = Field(True, description="replace emails, phone numbers, keys/tokens with [KIND] placeholders")
    patterns: dict[str, str] = Field(
        default_factory=dict, description="extra kinds to scrub: name -> regex (e.g. employee ids)"
    )
    canaries: list[CanaryConfig] = Field(default_factory=list, description="planted secrets the canary gate probes")
    canary_samples: int = Field(4, ge=0, description="sampled extraction attempts per canary and format (+1 greedy)")
    canary_temperature: float = Field(1.0, gt=0)

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"privacy.patterns: name {name!r} must be a word (letters, digits, _)")
            _check_regex(f"privacy.patterns.{name}", pattern)
        return patterns


def _check_regex(field: str, pattern: str) -> None:
    """A regex that compiles and cannot match the empty string (which would rewrite every gap)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{field}: not a valid regular expression ({exc}): {pattern!r}") from None
    if compiled.fullmatch("") is not None or compiled.search("") is not None:
        raise ValueError(f"{field}: {pattern!r} matches the empty string; expected a pattern that needs text")


class CadenceConfig(Section):
    """Retrain only when enough is new since the last registered version (0 = always retrain)."""

    min_new_failures: int = Field(0, ge=0)
    min_new_hints: int = Field(0, ge=0)
    episodes_per_day: int = Field(
        1000,
        ge=0,
        description="production episodes a day: scales the student's per-episode token savings "
        "into the break-even figure (r2w/costs.py)",
    )


class RegistryConfig(Section):
    tracking_uri: str | None = Field(None, description="defaults to sqlite:///<data_dir>/mlflow.db")
    experiment: str = "r2w"
    model_name: str = "r2w-student"


class R2WConfig(Section):
    name: str = "demo"
    data_dir: str = ".r2w"
    runtime: RuntimeConfig = RuntimeConfig()
    models: ModelsConfig = ModelsConfig()
    env: EnvConfig = EnvConfig()
    agent: AgentConfig = AgentConfig()
    collect: CollectConfig = CollectConfig()
    hints: HintsConfig = HintsConfig()
    teach: TeachConfig = TeachConfig()
    verify: VerifyConfig = VerifyConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    cadence: CadenceConfig = CadenceConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @model_validator(mode="after")
    def _resolve(self) -> R2WConfig:
        if self.evaluate.test_episodes < 2:
            raise ValueError("evaluate.test_episodes must be >= 2 to report an interval")
        seen = set(self.evaluate.retention_families) & set(self.env.families)
        if self.env.name == "reasoning_gym" and seen:
            raise ValueError(f"evaluate.retention_families: {sorted(seen)} are trained on (env.families), not held out")
        if self.agent.action_selection == "score" and self.models.backend != "transformers":
            raise ValueError(
                f"agent.action_selection=score scores every valid action with the model's logits: it needs "
                f"models.backend=transformers, got {self.models.backend!r}"
            )
        if self.env.name == "trace_replay" and self.collect.source == "rollout":
            raise ValueError(
                "env.name=trace_replay replays imported failures: collect.source must be imports, traces or mlflow"
            )
        replayed = set(self.distill.replay.families)
        if replayed & set(self.evaluate.retention_families):
            raise ValueError(
                f"distill.replay.families: {sorted(replayed & set(self.evaluate.retention_families))} are also "
                "evaluate.retention_families; replaying them would train what the retention gate measures"
            )
        if self.env.name == "reasoning_gym" and replayed & set(self.env.families):
            raise ValueError(
                f"distill.replay.families: {sorted(replayed & set(self.env.families))} are the trained env.families; "
                "replaying the base's answers there would pull against the teacher"
            )
        return self

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def train_seed(self) -> int:
        """The student's training seed: distill.seed when set, else the run's seed."""
        return self.runtime.seed if self.distill.seed is None else self.distill.seed

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.data_path / 'mlflow.db'}"

    @property
    def hash(self) -> str:
        """What the config makes happen: not where its data lives (data_dir) or where it runs (dask_address)."""
        return content_hash(self.model_dump(mode="json", exclude={"data_dir"}))[:12]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> R2WConfig:
    """Load a YAML config (a file path or a bundled name like 'demo'), apply dotted overrides."""
    path = resolve_config_path(path or "demo")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        cfg = R2WConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            + (
                f" (got {type(err['input']).__name__} {_quote(err['input'])})"
                if not isinstance(err.get("input"), dict) and not _names_a_key(err["loc"])
                else ""
            )
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    missing = check_paths(cfg)  # every path-typed field, before any stage runs (exit 2, never a retry)
    if missing:
        raise ConfigError(f"{path}: {'; '.join(missing)}")
    return cfg


def _names_a_key(loc: tuple) -> bool:
    """Fields that name a key's environment variable: a wrong value may be the key itself, never quote it."""
    return bool(loc) and str(loc[-1]).endswith("api_key_env")


def _quote(value: object, limit: int = 80) -> str:
    """A config value quoted in an error: scrubbed (a config can hold a token), shortened."""
    text = scrub_text(repr(value).encode("utf-8", "backslashreplace").decode("utf-8"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_sets(sets: list[str] | None) -> dict:
    """`--set key=value` items as a dotted-override dict; values parse as JSON when they can."""
    overrides: dict = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def merge_overrides(base: dict | None, extra: dict) -> dict:
    """Deep-merge two override dicts (extra wins), so nested sections are extended, not replaced."""
    out = dict(base or {})
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!s}: no such file and not a bundled config (bundled: {known})")


def _set_dotted(raw: dict, dotted: str, value: object) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for key, sub in value.items():  # deep-merge: {"gate": {"max_kl": 0}} keeps the other gates
            _set_dotted(node, f"{leaf}.{key}", sub)
    else:
        node[leaf] = value
