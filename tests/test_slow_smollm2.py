"""End to end with the real SmolLM2-135M (minutes): `python -m pytest -m slow`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_pull_and_small_retrain(tmp_path):
    from flows.retrain import retrain
    from r2w.models import pull_smollm2

    path = pull_smollm2(tmp_path)
    assert (path / "config.json").is_file() and pull_smollm2(tmp_path) == path  # idempotent
    summary = retrain(
        config="demo",
        overrides={
            "data_dir": str(tmp_path),
            "collect": {"episodes": 4},
            "teach": {"tasks": 4, "samples": 2},
            "distill": {"max_steps": 2},
            "evaluate": {"test_episodes": 4, "random_episodes": 20, "retention_tasks": 2},
            "env": {"max_steps": 6},
        },
    )
    assert summary.episodes == 4 and summary.hints_active >= 1
    assert set(summary.scores) == {"random", "base", "base+hints", "student"} or summary.training_examples == 0
