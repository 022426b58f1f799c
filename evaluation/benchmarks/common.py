"""What the benchmarks in evaluation/benchmarks share: arguments, set-up, playing held-out tasks, output.

A benchmark is a module whose docstring says what it measures (first paragraph: the `--help` line) and
how to launch it, with a `main(argv)` that builds its arguments with `parser(__doc__, ...)`, calls `load`
(config-driven) or `setup` (data-dir-driven) before any work, plays policies with `play` (r2w.rollout.play:
no benchmark keeps its own rollout loop) and writes its JSON with `write_out` (atomically).

Import order (the one rule, r2w/runtime.py): prefect, mlflow, dspy and huggingface_hub (so transformers,
trl, peft, datasets and vllm) read settings at import, and libgomp reads OMP_WAIT_POLICY once, when torch
loads. For benchmarks it is kept in one place:

1. Importing the package (evaluation/benchmarks/__init__.py) applies the process-wide defaults
   (`r2w.runtime.configure_process`: offline flags, OMP_WAIT_POLICY, malloc limits) before any benchmark
   module body runs. So benchmark modules import project modules (r2w, evaluation) at the top, the
   torch-loading r2w.rollout and r2w.backends included.
2. No project module imports prefect, mlflow, dspy, huggingface_hub, transformers, vllm or chromadb at
   import time: they import them inside the functions that use them (tests/test_benchmarks.py checks
   that importing every benchmark loads none of them).
3. `load` / `setup` put the data-dir settings (HF_HOME, PREFECT_HOME, DSPY_CACHEDIR, VLLM_CACHE_ROOT, ...)
   in place first thing in `main`; a benchmark's own imports of those libraries stay inside the functions
   that run after it.

Benchmarks import from r2w and evaluation only, never from tasks/ or flows/ (upward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from r2w import rollout
from r2w.backends import GenerationBackend, make_backend
from r2w.config import R2WConfig, load_config, parse_sets
from r2w.contracts import Episode
from r2w.datasets import write_json_atomically
from r2w.environment import EnvironmentFactory, TaskSpec
from r2w.models import resolve_model
from r2w.precision import cpu_flags
from r2w.runtime import configure_environment, set_torch_threads

T = TypeVar("T")

BATCH_CAP = 64  # episodes stepped in lockstep per generate call in a benchmark (agent.batch_size when smaller)


# ---------------------------------------------------------------------------------------------- arguments


def parser(
    doc: str,
    *,
    config: str | None = None,
    n: int | None = None,
    n_help: str = "held-out test seeds",
    model: str | None = None,
    model_help: str = "smollm2, tiny or an HF model folder",
    backend: bool = False,
    data_dir: str | None = None,
    threads: bool = False,
    out: str | None = None,
) -> argparse.ArgumentParser:
    """The benchmark's parser, with the common arguments it asks for (each only when given).

    config: --config (that default) and repeatable --set KEY=VALUE overrides; n: --n; model: --model;
    backend: --backend; data_dir: --data-dir; threads: --threads (torch threads); out: --out (its help).
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if config is not None:
        p.add_argument("--config", default=config, help="bundled config name or YAML path")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    if model is not None:
        p.add_argument("--model", default=model, help=model_help)
    if n is not None:
        p.add_argument("--n", type=int, default=n, help=n_help)
    if backend:
        p.add_argument("--backend", default="auto", help="auto (vLLM when installed) | vllm | transformers")
    if data_dir is not None:
        p.add_argument("--data-dir", default=data_dir, help="data dir: provisioned models (smollm2, tiny), caches")
    if threads:
        p.add_argument("--threads", type=int, default=1, help="torch threads")
    if out is not None:
        p.add_argument("--out", default=None, help=out)
    return p


JSON_OUT = "JSON file (written atomically)"


# ---------------------------------------------------------------------------------------------- set-up


def setup(data_dir: str | Path, threads: int | None = None) -> Path:
    """Caches and offline settings under data_dir (before anything imports the libraries that read them);
    torch threads when given (a benchmark that never runs torch leaves them, and torch, alone)."""
    data = configure_environment(data_dir)
    if threads is not None:
        set_torch_threads(threads)
    return data


def load(
    config: str, sets: Sequence[str] = (), overrides: Mapping[str, Any] | None = None, threads: int | None = None
) -> R2WConfig:
    """The config (--set items, then `overrides`, which win), set up under its data dir with
    `runtime.torch_threads` (or `threads`)."""
    cfg = load_config(config, {**parse_sets(list(sets)), **(overrides or {})})
    setup(cfg.data_dir, cfg.runtime.torch_threads if threads is None else threads)
    return cfg


def variant(cfg: R2WConfig, section: str, **fields: Any) -> R2WConfig:
    """The config with some fields of one section changed, e.g. variant(cfg, "hints", k=0)."""
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=fields)})


def backend(
    cfg: R2WConfig, model: str | Path, kind: str | None = None, dtype: str | None = None, seed: int = 0
) -> GenerationBackend:
    """r2w.backends.make_backend for a model spec ('smollm2', 'tiny' or a folder) under the config's data
    dir; the config's backend and dtype unless given."""
    path = resolve_model(str(model), cfg.data_path)
    return make_backend(kind or cfg.models.backend, path, dtype=dtype or cfg.models.dtype, seed=seed)


# ---------------------------------------------------------------------------------------------- playing


def play(
    cfg: R2WConfig,
    factory: EnvironmentFactory,
    tasks: list[TaskSpec],
    policy: rollout.Policy,
    desc: str,
    retrieve: rollout.HintRetriever | None = None,
    batch_size: int | None = None,
) -> list[Episode]:
    """r2w.rollout.play (one sample per task; hints.k retrieved hints with `retrieve`), batches capped at
    BATCH_CAP unless `batch_size` is given."""
    batch = batch_size or min(cfg.agent.batch_size, BATCH_CAP)
    return rollout.play(cfg, factory, tasks, policy, desc, retrieve=retrieve, batch_size=batch)


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """fn(*args, **kwargs) and the seconds it took."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def run_half(module: str, argv: list[str], env: Mapping[str, str] | None = None) -> dict:
    """Run `python -m module --half ...` (one backend's or device's half in its own process) and return the
    JSON its last stdout line holds; a failed half raises with its stderr."""
    out = subprocess.run([sys.executable, "-m", module, *argv], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(argv)} failed (exit {out.returncode}):\n{out.stderr[-12000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- the machine

SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")  # what CPU speed hinges on


def cpu_name() -> str:
    """The CPU's model name (lscpu), or what the platform says."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def machine() -> dict:
    """What a speed figure is printed beside: CPU model, the flags speed depends on, cores, load average."""
    return {
        "cpu": cpu_name(),
        "flags": [f for f in SPEED_FLAGS if f in cpu_flags()],
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------------------------------------- output


def write_out(path: str | Path | None, obj: object) -> None:
    """Write the result as JSON (atomically) when an output path was given."""
    if path:
        write_json_atomically(path, obj)


def report(result: T, text: str, out: str | Path | None) -> T:
    """Print the benchmark's tables, write its result as JSON (atomically) when --out was given; the result."""
    print(text)
    write_out(out, result)
    return result


def success(score: Any, digits: int = 1) -> str:
    """'k/n = rate (low-high)': a score (model or dict) with its 95% interval."""
    s = score if isinstance(score, dict) else score.model_dump()
    return f"{s['successes']}/{s['n']} = {s['rate']:.{digits}%} ({s['ci_low']:.{digits}%}-{s['ci_high']:.{digits}%})"


def scores_table(scores: list[dict]) -> list[str]:
    """Markdown rows: each policy's success with its interval, n, steps and tokens per episode."""
    lines = ["| policy | success (95% CI) | n | steps/ep | tokens/ep |", "|---|---|---:|---:|---:|"]
    for s in scores:
        lines.append(
            f"| {s['policy']} | {s['rate']:.1%} ({s['ci_low']:.1%}-{s['ci_high']:.1%}) | {s['n']} "
            f"| {s['mean_steps']:.1f} | {s['mean_tokens']:.0f} |"
        )
    return lines


def paired_table(comparisons: list[dict]) -> list[str]:
    """Markdown rows: discordant seeds, the paired difference with its interval, McNemar p."""
    lines = ["| paired (same seeds) | a only | b only | diff (95% CI) | McNemar p |", "|---|---:|---:|---|---:|"]
    for c in comparisons:
        t = c["table"]
        lines.append(
            f"| {c['a']} vs {c['b']} | {t['only_a']} | {t['only_b']} | {c['diff']:+.1%} "
            f"({c['ci_low']:+.1%}..{c['ci_high']:+.1%}) | {c['p_mcnemar']:.2g} |"
        )
    return lines


def tables(header: str, scores: dict[str, dict], comparisons: list[dict]) -> list[str]:
    """A header line, the scores table and, when there are comparisons, the paired table."""
    lines = [header, "", *scores_table(list(scores.values()))]
    if comparisons:
        lines += ["", *paired_table(comparisons)]
    return lines
