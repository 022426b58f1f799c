"""Stage 1 - collect: roll the base agent out on training games and keep its failures.

All episodes are stored (the failed ones also become DPO 'rejected' attempts later);
failures are stored as their own versioned dataset, the input of hint extraction.
Imported failures (`collect.source: imports`, the datasets `r2w collect import` stored; or trace files,
or MLflow traces) are stored under the category the teacher retrieves hints by (`retrieval_categories`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from evaluation.environments import make_environment
from evaluation.environments.trace_replay import require_judgeable
from r2w.backends import GenerationBackend
from r2w.caching import expensive_stage
from r2w.config import ConfigError, R2WConfig
from r2w.contracts import Episode, utcnow
from r2w.datasets import DatasetRef, load_records, record_import, recorded_imports, save_records
from r2w.importers.files import import_file, load_outcomes
from r2w.privacy import scrub_episodes
from r2w.scaleout import IN_PROCESS, Played, play_agent
from r2w.traces import ImportStats, TraceImportError, import_mlflow_traces, in_window, parse_window


class CollectResult(BaseModel):
    episodes: DatasetRef
    failures: DatasetRef
    n_episodes: int
    n_failures: int
    scrubbed: dict[str, int] = {}  # kind of private data -> matches replaced before storing (r2w/privacy.py)
    tokens: int = 0  # prompt + completion tokens the rollouts generated (imports: 0)
    workers: list[str] = []  # who played the rollouts: in-process, or Dask workers (runtime.dask_address)

    def metrics(self) -> dict[str, float]:
        scrubbed = {f"privacy.scrubbed.{kind}": n for kind, n in self.scrubbed.items()}
        return {"collect.episodes": self.n_episodes, "collect.failures": self.n_failures, **scrubbed}


def play_training_games(cfg: R2WConfig, backend: GenerationBackend, policy_name: str = "base") -> Played:
    """The base agent's rollouts on the train split, as configured: `collect.episodes` tasks from
    `collect.offset` (the retrain flow resolves `auto` first); on Dask workers when runtime.dask_address is set."""
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", cfg.collect.episodes, task_offset(cfg))
    return play_agent(
        cfg, factory, make_environment, tasks, backend, policy_name, cfg.collect.temperature, "collect (base agent)"
    )


def task_offset(cfg: R2WConfig) -> int:
    """The round's first train task; `auto` must have been resolved (flows/rounds.py) before a stage runs."""
    if cfg.collect.offset == "auto":
        raise ValueError("collect.offset=auto: resolved by the retrain flow from the previous round (flows/rounds.py)")
    return cfg.collect.offset


def collect_failures(
    cfg: R2WConfig, backend: GenerationBackend, policy_name: str = "base", sources: str = ""
) -> CollectResult:
    """Failures of the base agent: rolled out now, or imported from traces in a time window.

    `sources` is the content fingerprint of imported sources (see `source_fingerprint`): it only
    enters the cache key, so new traces in the same window are collected again.
    """
    if cfg.collect.source == "imports":
        return load_imports(cfg)
    if cfg.collect.source != "rollout":
        return import_failures(cfg)
    played = play_training_games(cfg, backend, policy_name)
    return store_rollouts(cfg, played.episodes, {"policy": policy_name}, played.workers)


def store_rollouts(
    cfg: R2WConfig, episodes: list[Episode], meta: dict, workers: list[str] | None = None
) -> CollectResult:
    """The one save path for rolled-out episodes (in-process or sharded): scrubbed, then stored with
    their failures as a dataset of their own. `workers` (who played) stays out of the stored datasets."""
    episodes, scrubbed = scrub_episodes(episodes, cfg.privacy)  # before anything is stored
    failures = [e for e in episodes if not e.success]
    root = Path(cfg.data_path) / "datasets"
    meta = {"env": cfg.env.model_dump(), "config_hash": cfg.hash, **meta, "scrubbed": scrubbed}
    return CollectResult(
        episodes=save_records(episodes, root, "episodes", meta),
        failures=save_records(failures, root, "failures", meta),
        n_episodes=len(episodes),
        n_failures=len(failures),
        scrubbed=scrubbed,
        tokens=sum(e.total_tokens for e in episodes),
        workers=workers or [IN_PROCESS],
    )


def import_failures(cfg: R2WConfig) -> CollectResult:
    """Failures from trace files or MLflow traces within [collect.since, collect.until)."""

    c = cfg.collect
    stats, episodes, errors = ImportStats(), [], []
    if c.source == "traces":
        outcomes = None
        if c.trace_outcomes:
            outcomes, outcome_errors = load_outcomes(c.trace_outcomes)
            if outcome_errors:
                raise TraceImportError(outcome_errors)
        for path in c.trace_paths:
            got, errs = import_file(  # any supported format, detected by content (r2w/importers)
                path,
                c.trace_format,
                c.since,
                c.until,
                skip_invalid=c.skip_invalid,
                stats=stats,
                max_record_bytes=c.max_record_bytes,
                privacy=cfg.privacy,
                outcomes=outcomes,
            )
            episodes += got
            errors += errs
        unusable = any(e.unusable_file for e in errors)  # skip_invalid skips bad records, not a mistyped path
        if errors and (not c.skip_invalid or unusable):
            raise TraceImportError(errors)
    else:
        uri = c.mlflow_tracking_uri or cfg.tracking_uri
        episodes = import_mlflow_traces(uri, c.mlflow_experiment, c.since, c.until, stats=stats)
    meta = {"sources": stats.sources, "window": [c.since, c.until], "invalid_skipped": stats.invalid}
    result = store_imported(cfg, episodes, meta, stats.records)
    record_import(result.failures, {"sources": stats.sources, "window": {"since": c.since, "until": c.until},
                                    "rows": result.failures.rows})  # fmt: skip
    return result


def load_imports(cfg: R2WConfig) -> CollectResult:
    """Failures from the import datasets `r2w collect import` stored (content-hashed, scrubbed), with
    `collect.since/until` as a window over the episodes' own times: a backfill re-reads no trace file."""
    c = cfg.collect
    root = Path(cfg.data_path) / "datasets"
    try:
        refs = recorded_imports(root, c.import_datasets)
        since, until = parse_window(c.since, c.until)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not refs:
        raise ConfigError(
            f"collect.source=imports: no import datasets under {root / 'failures'}; "
            "run `r2w collect import FILE...` (or `r2w collect mlflow`) with this config first"
        )
    episodes: dict[str, Episode] = {}
    read = 0
    for ref in refs:
        for episode in load_records(ref, Episode):  # verifies the content hash
            read += 1
            if not episode.success and in_window(episode.created_at, since, until):
                episodes.setdefault(episode.episode_id, episode)  # one failure imported twice counts once
    meta = {"from_imports": [r.hash for r in refs], "window": [c.since, c.until]}
    return store_imported(cfg, list(episodes.values()), meta, read)


def store_imported(cfg: R2WConfig, episodes: list[Episode], meta: dict, read: int) -> CollectResult:
    """Imported failures, scrubbed (untrusted text) and filed under retrieval categories, as a dataset."""
    episodes, scrubbed = scrub_episodes(episodes, cfg.privacy)  # untrusted text: scrubbed before it is stored
    episodes, relabelled = retrieval_categories(cfg, episodes)
    if cfg.env.name == "trace_replay" and cfg.verify.kind == "env":  # else the configured verifier decides
        require_judgeable(episodes)  # before any stage spends time on tasks no one can verify
    meta = {**meta, "scrubbed": scrubbed, "categories": relabelled}
    ref = save_records(episodes, Path(cfg.data_path) / "datasets", "failures", meta)
    return CollectResult(episodes=ref, failures=ref, n_episodes=read, n_failures=len(episodes), scrubbed=scrubbed)


def retrieval_categories(cfg: R2WConfig, episodes: list[Episode]) -> tuple[list[Episode], dict[str, str]]:
    """Imported failures filed under the category the teacher retrieves hints by; returns {old: new}.

    Why: hints are stored and retrieved by category, and the teacher retrieves by its task's category. An
    imported trace names its own ("chat", "weather_agent"), so its hints would sit where no teacher looks.
    A failure the environment can restore takes its restored task's category; under `trace_replay` the
    replayed task is the failure itself (its category stays); otherwise the environment's category.
    """
    if cfg.env.name == "trace_replay" or not episodes:
        return episodes, {}
    factory = make_environment(cfg.env)
    restore = getattr(factory, "restore", None)
    out, relabelled = [], {}
    for episode in episodes:
        task = restore(episode) if restore is not None else None
        category = task.category if task is not None else factory.category
        if category != episode.category:
            relabelled[episode.category] = category
            episode = episode.model_copy(update={"category": category})
        out.append(episode)
    return out, relabelled


def source_fingerprint(cfg: R2WConfig) -> str:
    """Content identity of imported sources: file hashes; an open-ended MLflow window never caches."""
    import hashlib

    c = cfg.collect
    if c.source == "traces":
        return ",".join(
            hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16] if Path(p).is_file() else f"missing:{p}"
            for p in c.trace_paths
        )
    if c.source == "mlflow":
        return f"until:{c.until}" if c.until else f"now:{utcnow().isoformat()}"
    if c.source == "imports":  # the stored datasets' content hashes: a new import means a new key
        try:
            return ",".join(r.hash[:16] for r in recorded_imports(Path(cfg.data_path) / "datasets", c.import_datasets))
        except ValueError:
            return "unresolved"  # the stage itself raises the config error
    return ""


collect_task = task(**expensive_stage("collect-failures", "models", "env", "agent", "collect", "runtime", "privacy"))(
    collect_failures
)
