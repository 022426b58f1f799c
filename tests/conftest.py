"""Test-session environment: offline flags and every cache (Prefect's DB too) in a temp dir.

Set before anything imports prefect/mlflow/dspy, which read their settings at import time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="r2w-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_DIR / "prefect"))
os.environ.setdefault("DSPY_CACHEDIR", str(_SESSION_DIR / "dspy"))

from r2w.runtime import configure_environment, set_torch_threads  # noqa: E402

configure_environment(_SESSION_DIR)
set_torch_threads(1)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tiny_model(session_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama + small BPE tokenizer, built once per session."""
    from r2w.models import resolve_model

    return resolve_model("tiny", session_dir)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model: Path):
    from r2w.backends.hf import TransformersBackend

    return TransformersBackend(tiny_model, dtype="float32")


@pytest.fixture(scope="session", autouse=True)
def prefect_backend():
    """A temporary Prefect API for the session, stopped while pytest still owns the console."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
