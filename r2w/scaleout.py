"""Rollouts spread over Dask workers through Prefect's task runner, or played in this process.

    r2w run --config demo --dask-address tcp://HOST:8786     # or runtime.dask_address in the config
    r2w run --config demo --dask-address local:2             # 2 worker processes on this machine

`play_agent` is what the collect, teach and evaluate stages call to play the agent. Without
`runtime.dask_address` it is `rollout.play`, in this process. With it, the (task, sample) jobs are cut into
the lockstep batches `play` itself would play (`agent.batch_size` consecutive jobs); each batch is one Prefect
task (`rollout-batch`) submitted through prefect-dask's DaskTaskRunner, and the episodes come back in batch
order, whatever order the workers finish in.

What travels: the config, a batch's jobs, the backend's recipe (kind, model path, dtype, seed, or a server
URL) and the hints the driver prefetched for these tasks. Never weights: each worker process builds each
backend once from its recipe and keeps it for later batches, so the model folder must be at the same path on
every worker (a shared data volume, infra/README.md), or the backend is a server (`models.teacher_url`).
What comes back: the episodes, in memory (`persist_result=False`), and which worker played them.
What a worker writes: nothing the driver reads. No datasets, no MLflow, no Chroma (hints are prefetched), no
Prefect result files; its task runs go to the driver's Prefect API (workers on other machines need
PREFECT_API_URL to name a server both reach: `r2w stack up`, infra/compose).

Same content: a batch's random draws are keyed by its jobs and step (`rollout.draw_key`), not by a call
counter, so the stored datasets have the content hashes of a single-process run with the same seeds (same
hardware and library versions; tests/ops/test_dask.py). Only Dask is supported; Ray is neither supported
nor tested here (prefect-ray is not installed).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from r2w.backends import BackendRecipe, GenerationBackend
from r2w.config import EnvConfig, R2WConfig
from r2w.contracts import Episode
from r2w.environment import TaskSpec
from r2w.locks import file_lock
from r2w.rollout import HintRetriever, PrefetchedHints, agent_policy, jobs_of, play, play_jobs, prefetch_hints
from r2w.runtime import configure_process, set_torch_threads

log = logging.getLogger(__name__)

IN_PROCESS = "in-process"
WORKER_BACKENDS = 2  # backends a worker keeps loaded (evaluate plays base and student): least recently used go
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class Played:
    """A stage's episodes, in job order, and who played them ('in-process', or '<worker address> pid N')."""

    episodes: list[Episode]
    workers: list[str]


@dataclass(frozen=True)
class AgentRecipe:
    """What a worker rebuilds the agent from: the backend's recipe and the policy's name and temperature."""

    backend: BackendRecipe
    name: str
    temperature: float


@dataclass
class BatchPlayed:
    episodes: list[Episode]
    worker: str


def play_agent(
    cfg: R2WConfig,
    factory,
    make_env: Callable[[EnvConfig], object],
    tasks: list[TaskSpec],
    backend: GenerationBackend,
    name: str,
    temperature: float,
    desc: str,
    samples: int = 1,
    retrieve: HintRetriever | None = None,
) -> Played:
    """Play the agent (`agent_policy(cfg, backend, name, temperature)`) on `tasks`, `samples` times each: here,
    or on the Dask cluster of `runtime.dask_address`, where `make_env(cfg.env)` builds the environment (a
    module-level function: it travels by name)."""
    address = cfg.runtime.dask_address
    if address is None:
        policy = agent_policy(cfg, backend, name, temperature)
        return Played(play(cfg, factory, tasks, policy, desc, samples, retrieve), [IN_PROCESS])
    recipe = getattr(backend, "recipe", None)
    if recipe is None:
        raise ValueError(
            f"runtime.dask_address={address}: the {backend.name} backend ({backend.identity}) was not built by "
            "r2w.backends.make_backend, so a worker cannot rebuild it (unset runtime.dask_address to play in-process)"
        )
    hints = prefetch_hints(factory, tasks, retrieve, cfg.hints.k) if retrieve is not None else None
    jobs, size = jobs_of(tasks, samples), cfg.agent.batch_size
    batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    agent = AgentRecipe(recipe, name, temperature)
    runner = task_runner(address)
    with _api_reachable_from_workers(runner), _outside_the_stage_task():
        futures = [
            runner.submit(
                _batch_task(),
                {
                    "cfg": cfg,
                    "make_env": make_env,
                    "jobs": batch,
                    "agent": agent,
                    "hints": hints,
                    "desc": f"{desc} [batch {i + 1}/{len(batches)}]",
                },  # fmt: skip
            )
            for i, batch in enumerate(batches)
        ]
        results = [f.result() for f in futures]  # submission order = job order: a deterministic merge
    log.info("%s: %d batches on %s", desc, len(batches), sorted({r.worker for r in results}))
    return Played([e for r in results for e in r.episodes], sorted({r.worker for r in results}))


# ------------------------------------------------------------------------------------------- on a worker

_BACKENDS: OrderedDict[BackendRecipe, GenerationBackend] = OrderedDict()
_FACTORIES: dict[tuple, object] = {}
_PLAYING = threading.Lock()  # one batch at a time per process: torch's RNG and the backends are process-wide


def play_batch(
    cfg: R2WConfig,
    make_env: Callable[[EnvConfig], object],
    jobs: list[tuple[TaskSpec, int]],
    agent: AgentRecipe,
    hints: PrefetchedHints | None,
    desc: str,
) -> BatchPlayed:
    """One lockstep batch, on whichever process runs it (a Dask worker): the backend and environment are built
    here from their recipes (once per process), the hints come prefetched."""
    configure_process()  # offline flags, malloc limits; no data dir is created on the worker
    with _PLAYING:
        set_torch_threads(cfg.runtime.torch_threads)
        backend = _worker_backend(agent.backend)
        key = (getattr(make_env, "__qualname__", repr(make_env)), cfg.env.model_dump_json())
        if key not in _FACTORIES:
            _FACTORIES[key] = make_env(cfg.env)
        policy = agent_policy(cfg, backend, agent.name, agent.temperature)
        episodes = play_jobs(cfg, _FACTORIES[key], jobs, policy, desc, hints)
    return BatchPlayed(episodes, worker_identity())


def _worker_backend(recipe: BackendRecipe) -> GenerationBackend:
    if recipe in _BACKENDS:
        _BACKENDS.move_to_end(recipe)
        return _BACKENDS[recipe]
    if recipe.url is None:
        for what, path in (("model", recipe.model_path), ("adapter", recipe.adapter_path)):
            if path is not None and not Path(path).is_dir():
                raise FileNotFoundError(
                    f"worker {worker_identity()}: {what} folder {path} not found: every worker needs the data dir "
                    "at the same path (a shared volume, infra/README.md), or the model behind a server URL"
                )
    while len(_BACKENDS) >= WORKER_BACKENDS:
        _, old = _BACKENDS.popitem(last=False)
        old.close()
    _BACKENDS[recipe] = recipe.build()
    return _BACKENDS[recipe]


def worker_identity() -> str:
    """'<Dask worker address> pid N' on a worker, 'in-process pid N' elsewhere."""
    from distributed import get_worker

    try:
        return f"{get_worker().address} pid {os.getpid()}"
    except ValueError:  # not inside a Dask worker
        return f"{IN_PROCESS} pid {os.getpid()}"


@cache
def _batch_task():
    """The Prefect task around play_batch (built on first use: importing this module loads no prefect).
    No cache and no persisted result: the episodes travel back in memory, nothing is written on the worker."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name="rollout-batch", cache_policy=NO_CACHE, persist_result=False)(play_batch)


# ------------------------------------------------------------------------------------------- the driver

_RUNNERS: dict[str, object] = {}


def task_runner(address: str):
    """The started DaskTaskRunner for `address`, one per process (closed at exit): 'local[:N]' starts N
    single-threaded worker processes here (N = CPU cores when omitted); anything else is a scheduler."""
    from prefect_dask import DaskTaskRunner

    if address not in _RUNNERS:
        if address.startswith("local"):
            workers = int(address.split(":", 1)[1]) if ":" in address else (os.cpu_count() or 1)
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
        else:
            runner = DaskTaskRunner(address=address)
        runner.__enter__()
        atexit.register(_close, runner)
        try:
            runner.client.wait_for_workers(1, timeout=120)
        except TimeoutError:
            _close(runner)
            raise RuntimeError(
                f"runtime.dask_address={address}: no Dask worker joined within 120 s (start one: "
                f"`dask worker {address}`)"
            ) from None
        _RUNNERS[address] = runner
    return _RUNNERS[address]


def prepare(address: str, recipe: BackendRecipe, torch_threads: int = 1) -> list[str]:
    """Connect (or start the local cluster), make the Prefect API reachable and build the backend on every worker
    now, so later batches pay no start-up (benchmarks time rollouts only); returns who is ready."""
    runner = task_runner(address)
    with _api_reachable_from_workers(runner):
        pass
    return sorted(runner.client.run(_preload, recipe, torch_threads).values())


def close_runner(address: str) -> None:
    """Stop using `address` in this process (a local cluster's workers exit)."""
    runner = _RUNNERS.pop(address, None)
    if runner is not None:
        _close(runner)


def _preload(recipe: BackendRecipe, torch_threads: int, dask_worker=None) -> str:
    """Run by `client.run` on every worker (Dask passes `dask_worker`: outside a task, get_worker() has none)."""
    configure_process()
    with _PLAYING:
        set_torch_threads(torch_threads)
        _worker_backend(recipe)
    return f"{dask_worker.address} pid {os.getpid()}" if dask_worker is not None else worker_identity()


def _close(runner) -> None:
    try:
        runner.__exit__(None, None, None)
    except Exception as exc:  # noqa: BLE001 - at exit, a cluster already gone is not an error worth a traceback
        log.debug("closing the Dask task runner: %s", exc)


@contextmanager
def _api_reachable_from_workers(runner) -> Iterator[None]:
    """Workers report their task runs to the driver's Prefect API. With PREFECT_API_URL set, that server; else
    this process's ephemeral one, named explicitly so a loopback worker reports there instead of starting an
    API of its own. A worker on another machine cannot reach a loopback API: that is an error, not a guess."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    url = _ephemeral_api_url()
    remote = [w for w in runner.client.scheduler_info(n_workers=-1)["workers"] if urlparse(w).hostname not in LOOPBACK]
    if remote:
        raise RuntimeError(
            f"Dask workers {remote} are on other machines, but this run's Prefect API ({url}) is on loopback: set "
            "PREFECT_API_URL to a Prefect server both reach (r2w stack up, infra/compose), then rerun"
        )
    with temporary_settings({PREFECT_API_URL: url}):
        yield


@contextmanager
def _outside_the_stage_task() -> Iterator[None]:
    """Submit as children of the flow run, not of the calling stage task. Why: Prefect serialises the current task
    run's context, parameters included, into every submitted task; a stage's parameters hold the loaded backend
    (the weights would travel) and the hint store (its Chroma client cannot be pickled at all)."""
    from prefect.context import TaskRunContext

    token = TaskRunContext.__var__.set(None)
    try:
        yield
    finally:
        TaskRunContext.__var__.reset(token)


def _ephemeral_api_url() -> str:
    """The URL of this process's ephemeral Prefect API (started if no flow started it yet, first start under the
    lock r2w.runstate.local_api takes; that module loads prefect at import, which benchmarks must not)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    server = SubprocessASGIServer()
    if not server.running:
        with file_lock(Path(get_current_settings().home).expanduser() / ".r2w-first-start.lock"):
            server.start()
    return server.api_url
