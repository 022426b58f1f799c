"""The benchmarks' import-order rule (evaluation/benchmarks/common.py) holds for every benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# read settings at import: only ever imported inside functions that run after common.load / common.setup
LATE = ("prefect", "mlflow", "dspy", "huggingface_hub", "transformers", "trl", "peft", "vllm", "chromadb")


def test_importing_any_benchmark_sets_process_defaults_first_and_loads_no_late_library():
    names = sorted(p.stem for p in (ROOT / "evaluation" / "benchmarks").glob("*.py") if p.stem != "__init__")
    code = (
        "import json, os, sys\n"
        + "".join(f"import evaluation.benchmarks.{n}\n" for n in names)
        + f"print(json.dumps({{'late': [m for m in {LATE!r} if m in sys.modules], "
        "'omp': os.environ.get('OMP_WAIT_POLICY'), 'torch': 'torch' in sys.modules}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"late": [], "omp": "PASSIVE", "torch": True}  # torch loaded, after the package set the policy
