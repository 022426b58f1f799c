"""infra/ is validated, not run: the dev machines have no Docker engine (and no compose plugin) and no Kubernetes
cluster (`kubectl apply --dry-run=client` needs one for discovery). So:
- the compose file is checked against the Compose Specification JSON schema (tests/data/compose_spec.json, from
  the docker-compose 1.29.2 wheel, Apache-2.0), after YAML anchors and merge keys are resolved;
- every Kubernetes manifest is validated by the `kubernetes` client's own typed models (pydantic, extra fields
  forbidden: an unknown or misspelt field, a wrong type or a missing required field is an error);
- the Prefect work-pool template is checked as Prefect reads it (its variables are a JSON schema).
Each check is shown to fail on a planted mistake."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yaml"
MANIFESTS = sorted((REPO / "infra" / "k8s").glob("*.yaml"))


def compose_errors(doc: dict) -> list[str]:
    schema = json.loads((REPO / "tests" / "data" / "compose_spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def k8s_errors(doc: dict) -> list[str]:
    """Problems of one manifest against the kubernetes client's models (pydantic, extra fields forbidden): its
    kind, unknown or misspelt fields, wrong types, missing required fields."""
    from kubernetes import client
    from pydantic import ValidationError

    version = doc.get("apiVersion", "").rsplit("/", 1)[-1]
    name = f"{version[:1].upper()}{version[1:]}{doc.get('kind', '')}"
    model = getattr(client, name, None)
    if model is None:
        return [f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}: no model {name} in the kubernetes client"]
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        return [f"{doc.get('kind')}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def test_compose_file_matches_the_compose_spec_and_runs_the_dask_cluster():
    doc = yaml.safe_load(COMPOSE.read_text())
    assert compose_errors(doc) == []
    services = doc["services"]
    assert {"prefect", "mlflow", "chroma", "dask-scheduler", "dask-worker", "r2w"} <= set(services)
    worker, driver = services["dask-worker"], services["r2w"]
    assert "tcp://dask-scheduler:8786" in worker["command"] and "--nthreads 1" in worker["command"]
    assert "--dask-address tcp://dask-scheduler:8786" in driver["command"]
    # the data dir on one shared volume at the same path in every container; task runs to the shared Prefect
    assert worker["volumes"] == driver["volumes"] == ["r2w-data:/data"] and "r2w-data" in doc["volumes"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    broken = {**doc, "services": {**services, "dask-worker": {**worker, "replicas_typo": 2}}}
    assert any("replicas_typo" in e for e in compose_errors(broken))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_api_models(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert k8s_errors(doc) == [], doc.get("kind")


def test_kubernetes_check_catches_a_misspelt_field_and_a_missing_required_one():
    docs = [d for d in yaml.safe_load_all((REPO / "infra" / "k8s" / "dask.yaml").read_text()) if d]
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dask-worker")
    assert worker["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "r2w-data"
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert (
        "tcp://dask-scheduler.r2w:8786" in container["command"] and container["volumeMounts"][0]["mountPath"] == "/data"
    )
    container["volumeMount"] = container.pop("volumeMounts")  # misspelt
    assert any("volumeMount: Extra inputs are not permitted" in e for e in k8s_errors(worker))
    container["volumeMounts"] = container.pop("volumeMount")
    assert k8s_errors(worker) == []
    del container["name"]
    assert any(e.endswith("name: Field required") for e in k8s_errors(worker))


def test_work_pool_template_is_a_job_with_a_valid_variables_schema():
    template = json.loads((REPO / "infra" / "k8s" / "work-pool-job-template.json").read_text())
    assert template["job_configuration"]["job_manifest"]["kind"] == "Job"
    jsonschema.Draft7Validator.check_schema(template["variables"])
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft7Validator.check_schema({**template["variables"], "type": "no-such-type"})
