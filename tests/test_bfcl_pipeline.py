"""BFCL, single-turn (simple_python) and multi-turn (multi_turn_base), through the whole `r2w run` on the tiny
model: the test config with the environment switched to BFCL and tiny counts.

The random tiny model never makes a correct call, so no teacher attempt is verified and the run ends, as it
must, before training, with the reason recorded; the stages before it ran on real BFCL tasks and tools.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from flows.cli import app
from r2w.contracts import Episode
from r2w.datasets import load_records

pytestmark = pytest.mark.bfcl_pipeline


@pytest.mark.parametrize(("category", "steps"), [("simple_python", 1), ("multi_turn_base", 2)])
def test_bfcl_runs_through_r2w_run_on_the_tiny_model(tmp_path, category, steps):
    sets = [
        f"data_dir={tmp_path / 'data'}",
        "env.name=bfcl",
        f'env.options={{"category": "{category}", "test_fraction": 0.5}}',
        f"env.max_steps={steps}",
        "hints.collection=r2w-hints-bfcl-test",
        'hints.curated_packs=["configs/hints/bfcl_curated.jsonl"]',
        "hints.max_failures=1",
        "collect.episodes=2",
        "teach.tasks=2",
        "teach.samples=1",
        "agent.answer_max_new_tokens=12",
        f"registry.model_name=r2w-bfcl-{category}",
    ]
    result = CliRunner().invoke(app, ["run", "--config", "test", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    flat = re.sub(r"[\s│┌┐└┘─┬┴├┤┼]+", "", result.output)  # the summary table wraps its cells
    assert "whynoverifiedteachersuccessestotrainon" in flat, result.output
    assert "teacherattempts/trajectorieskept2/0" in flat and "gateFAILED" in flat, result.output
    for stage in ("collect", "hints", "teach", "build_examples"):
        assert f"{stage}Completed" in flat, (stage, result.output)
    failures = [e for d in (tmp_path / "data/datasets/failures").iterdir() for e in load_records(d, Episode)]
    assert len(failures) == 2 and {e.env for e in failures} == {"bfcl"} and {e.category for e in failures} == {category}
    assert all(e.tools and e.steps and e.steps[0].prompt[0].content.count("<tools>") == 1 for e in failures)
    assert all(not e.success and e.verdict_by == "environment:bfcl" for e in failures)
    teacher = [e for d in (tmp_path / "data/datasets").glob("teach*/*") for e in load_records(d, Episode)]
    assert not teacher or not any(e.success for e in teacher)
