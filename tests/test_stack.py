"""The full local stack for real: Prefect server + worker, MLflow server, Chroma server on
loopback, and the retrain flow pointed at them by configuration alone (marked `stack`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parent.parent


def test_stack_up_run_down(tmp_path):
    from flows.stack import down, stack_overrides, status, up

    raw = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    raw["data_dir"] = str(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    try:
        up(tmp_path)
        assert {s["name"] for s in status(tmp_path)["services"] if s["healthy"]} >= {"prefect", "mlflow", "chroma"}
        env, overrides = stack_overrides(tmp_path)
        # a fresh process, as a user would run it: `r2w run --config FILE --stack`
        result = subprocess.run(
            [str(Path(sys.executable).parent / "r2w"), "run", "--config", str(config), "--stack"],
            cwd=REPO,
            env={**os.environ, "PREFECT_HOME": str(tmp_path / "client-prefect")},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # the MLflow server holds the registered version
        from mlflow import MlflowClient

        client = MlflowClient(overrides["registry"]["tracking_uri"], overrides["registry"]["tracking_uri"])
        version = client.get_model_version_by_alias(raw["registry"]["model_name"], "challenger")
        assert str(version.version) == "1"
        # the Chroma server holds the hints
        import chromadb

        chroma = chromadb.HttpClient(host="127.0.0.1", port=int(overrides["hints"]["chroma_url"].rsplit(":", 1)[1]))
        # one collection per (category, status) of the configured store (r2w/hintstore.py)
        prefix = raw["hints"]["collection"] + "-a-"
        active = [c for c in chroma.list_collections() if c.name.startswith(prefix)]
        assert active and sum(chroma.get_collection(c.name).count() for c in active) >= 1
        # the Prefect server recorded the flow run
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(env["PREFECT_API_URL"]) as prefect:
            runs = prefect.read_flow_runs()
        assert any(r.state_name == "Completed" for r in runs)
    finally:
        stopped = down(tmp_path)
    assert set(stopped) >= {"prefect", "mlflow", "chroma"}
    assert not status(tmp_path)["services"]
