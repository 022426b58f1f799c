"""The `optimize-extractor` flow: compile the hint extractor against measured uplift, on a schedule, within a budget.

    python -m flows.optimize demo                      # same as `r2w hints optimize --config demo`
    r2w serve                                          # infra/prefect.yaml: optimize-extractor-weekly

Cost is bounded by `hints.optimize.max_metric_calls` and `max_minutes` (tasks/optimize.py). The compiled
program is saved as <data_dir>/prompts/extractor-<content hash>.json and <data_dir>/prompts/latest names it;
a retrain run with `hints.extractor.program: latest` extracts with it and records its hash in the lineage
of the version it registers (`r2w.extractor_program`).
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger

from r2w.config import load_config
from r2w.runtime import configure_environment
from tasks.optimize import optimize_task


@flow(name="optimize-extractor")
def optimize_extractor(config: str = "demo", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile the extractor (DSPy BootstrapFewShot on the teacher's uplift) and point `latest` at it."""
    cfg = load_config(config, overrides)
    configure_environment(cfg.data_dir)
    result = optimize_task(cfg)
    log = get_run_logger()
    log.info(
        "compiled %s: %d demos from %d failures (%d contrastive), %d teacher episodes%s",
        result.path.name, result.demos, result.training_failures, result.contrastive, result.episodes_played,
        f", stopped by {result.stopped_by}" if result.stopped_by else "",
    )  # fmt: skip
    return {
        "program": str(result.path),
        "program_hash": result.program_hash,
        "demos": result.demos,
        "training_failures": result.training_failures,
        "episodes_played": result.episodes_played,
        "stopped_by": result.stopped_by,
    }


if __name__ == "__main__":
    print(optimize_extractor(sys.argv[1] if len(sys.argv) > 1 else "demo"))
