"""Fixtures of the robustness suite.

`robust_run` runs the real retrain flow once (tiny model, real Prefect/Chroma/TRL/MLflow) on
imported traces that carry planted secrets, a canary and an injection; several tests read it.
"""

from __future__ import annotations

import pytest
from robust_helpers import plant, played_failures, robust_config, write_traces


@pytest.fixture(scope="session")
def robust_run(tmp_path_factory):
    """One real retrain run on poisoned, private traces: (summary, config path, data dir, planted failures)."""
    from flows.retrain import retrain

    data = tmp_path_factory.mktemp("robust-run")
    failures = plant(played_failures())
    assert len(failures) >= 3, "random play on 4 steps should fail most games"
    traces = write_traces(data.parent / f"{data.name}-traces.jsonl", failures)
    config = robust_config(data, traces, folder=data.parent / f"{data.name}-config")
    summary = retrain(config=str(config))
    return summary, config, data, failures
