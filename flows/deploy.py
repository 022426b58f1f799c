"""Register r2w's Prefect deployments declared in infra/prefect.yaml.

    r2w deploy [--pool NAME]         # register against PREFECT_API_URL, runs go to a work pool
    prefect worker start --pool NAME --type process    # from the repo root, one per parallel run
    r2w serve                        # register and run them from this process (no work pool)
    prefect deploy --all --prefect-file infra/prefect.yaml   # the same, with Prefect's own CLI

The YAML stays the single source of truth: both routes read the same names, crons,
parameters, concurrency limits, work pool and triggers (Prefect's own `triggers:` format; an
event trigger starts a retrain once enough imported failures arrived: flows/events.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events import DeploymentTriggerTypes
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import TypeAdapter, ValidationError

from flows.events import model_resource_id
from r2w.config import load_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "infra" / "prefect.yaml"
_TRIGGERS: TypeAdapter[DeploymentTriggerTypes] = TypeAdapter(DeploymentTriggerTypes)


def load_specs(path: str | Path = DEFAULT_SPEC) -> list[dict[str, Any]]:
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    specs = data.get("deployments")
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{path}: expected a non-empty 'deployments' list")
    for i, spec in enumerate(specs):
        for key in ("name", "entrypoint"):
            if key not in spec:
                raise ValueError(f"{path}: deployments[{i}] has no '{key}'")
    return specs


def load_flow(entrypoint: str):
    """'flows/retrain.py:retrain' -> the flow object."""
    file, _, attr = entrypoint.partition(":")
    module = file.removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(module), attr)


def build_deployments(path: str | Path = DEFAULT_SPEC, pool: str | None = None, use_pools: bool = True) -> list:
    """RunnerDeployments of the spec; `pool` overrides each spec's `work_pool.name` (use_pools=False: none)."""
    deployments = []
    for i, spec in enumerate(load_specs(path)):
        crons = [s["cron"] for s in spec.get("schedules", []) if "cron" in s]
        parameters = spec.get("parameters") or {}
        pool_name = (pool or (spec.get("work_pool") or {}).get("name")) if use_pools else None
        deployments.append(
            load_flow(spec["entrypoint"]).to_deployment(
                name=spec["name"],
                cron=crons or None,
                parameters=parameters,
                description=spec.get("description"),
                concurrency_limit=spec.get("concurrency_limit"),
                tags=spec.get("tags") or ["r2w"],
                triggers=triggers(spec, f"{path}: deployments[{i}]"),
                work_pool_name=pool_name,
                # a process worker runs the flow here, wherever the worker was started
                job_variables={"working_dir": str(REPO)} if pool_name else None,
            )
        )
    return deployments


def triggers(spec: dict[str, Any], where: str) -> list:
    """A spec's `triggers:` (Prefect's format: type: event, match, expect, threshold, within, ...).

    A trigger that matches an r2w model (`prefect.resource.id: r2w.model.<name>`, what
    `r2w collect import` emits, flows/events.py) must name the model its deployment's config
    retrains; otherwise the deployment would wait for events of another model forever.
    """
    out = []
    for j, raw in enumerate(spec.get("triggers") or []):
        try:
            out.append(_TRIGGERS.validate_python(raw))
        except ValidationError as exc:
            raise ValueError(f"{where}.triggers[{j}]: not a Prefect deployment trigger: {exc}") from None
        matched = str((raw.get("match") or {}).get("prefect.resource.id", ""))
        if matched.startswith("r2w.model."):
            params = spec.get("parameters") or {}
            model = load_config(params.get("config", "demo"), params.get("overrides")).registry.model_name
            if matched != model_resource_id(model):
                raise ValueError(
                    f"{where}.triggers[{j}].match: {matched!r} is not the model this deployment retrains; "
                    f"expected {model_resource_id(model)!r} (registry.model_name of config {params.get('config')!r})"
                )
    return out


def deploy(path: str | Path = DEFAULT_SPEC, pool: str | None = None) -> list[str]:
    """Register every deployment (creating its process work pool if missing); returns 'flow/deployment' names."""
    names = []
    for deployment in build_deployments(path, pool):
        if deployment.work_pool_name:
            ensure_process_pool(deployment.work_pool_name)
        deployment.apply()
        names.append(deployment.full_name)
    return names


def ensure_process_pool(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:  # a worker or another deploy created it first
                pass


def serve(path: str | Path = DEFAULT_SPEC) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(path, use_pools=False))
