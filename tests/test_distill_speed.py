"""The training core runs without the orchestration stack (as on a bare GPU box), and the speed benchmark
trains through it on a stored distill-examples dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_PREFECT = "import sys; sys.modules['prefect'] = None; "  # `import prefect` now raises ImportError


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_training_core_imports_without_prefect():
    ok = _python(NO_PREFECT + "import r2w.trainers, evaluation.benchmarks.distill_speed")
    assert ok.returncode == 0, ok.stderr
    # the check has teeth: the Prefect stage module itself does need Prefect
    blocked = _python(NO_PREFECT + "import tasks.distill")
    assert blocked.returncode != 0 and "prefect" in blocked.stderr


def test_distill_speed_trains_on_stored_examples(tiny_model: Path, tmp_path: Path, capsys):
    from evaluation.benchmarks import distill_speed
    from evaluation.benchmarks.sft_overhead import synthetic_examples
    from r2w.datasets import save_records

    ref = save_records(synthetic_examples(n=8), tmp_path / "datasets", "distill-examples")
    argv = ["--model", str(tiny_model), "--examples", str(ref.path), "--steps", "2", "--data-dir", str(tmp_path)]
    assert distill_speed.main([*argv, "--methods", "sft", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert f"examples={ref.path}" in out and "batch=2" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("sft "))
    assert float(row[1]) > 0  # s/step measured from the Trainer's own runtime

    with pytest.raises(SystemExit, match="no rejected action"):  # SFT rows cannot feed DPO
        distill_speed.main([*argv, "--methods", "dpo"])


def test_unknown_architecture_is_named(tmp_path: Path, tiny_model: Path):
    from evaluation.benchmarks.distill_speed import build_architecture

    with pytest.raises(SystemExit, match="smollm2-9b.*smollm2-135m"):
        build_architecture("smollm2-9b", tiny_model, tmp_path / "m")
