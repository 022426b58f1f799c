"""Register r2w's Prefect deployments declared in infra/prefect.yaml.

    r2w deploy                       # register schedules/parameters against PREFECT_API_URL
    r2w serve                        # register and run them from this process (no work pool)
    prefect deploy --all --prefect-file infra/prefect.yaml   # the work-pool route

The YAML stays the single source of truth: both routes read the same names, crons,
parameters and concurrency limits.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "infra" / "prefect.yaml"


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


def build_deployments(path: str | Path = DEFAULT_SPEC) -> list:
    deployments = []
    for spec in load_specs(path):
        crons = [s["cron"] for s in spec.get("schedules", []) if "cron" in s]
        deployments.append(
            load_flow(spec["entrypoint"]).to_deployment(
                name=spec["name"],
                cron=crons or None,
                parameters=spec.get("parameters") or {},
                description=spec.get("description"),
                concurrency_limit=spec.get("concurrency_limit"),
                tags=spec.get("tags") or ["r2w"],
            )
        )
    return deployments


def deploy(path: str | Path = DEFAULT_SPEC) -> list[str]:
    """Register every deployment; returns their full names ('flow/deployment')."""
    names = []
    for deployment in build_deployments(path):
        deployment.apply()
        names.append(deployment.full_name)
    return names


def serve(path: str | Path = DEFAULT_SPEC) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(path))
