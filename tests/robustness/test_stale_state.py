"""Data loss and stale state (issue 21): a rerun after part of the data dir was deleted, damaged or moved.

Stage results are cached by Prefect, but a result is only a pointer to what the stage wrote (datasets,
student folders, hints in Chroma). Before the fix results lived in ~/.prefect/storage, outside the data
dir, and a rerun after the datasets were deleted failed every time with FileNotFoundError
.../datasets/failures/<id>/manifest.json. Now results live under the data dir, and a cached result whose
referents are missing or fail their content hash is expired and the stage recomputed.

Every run is the real retrain flow on the `test` config (tiny model, real Prefect/Chroma/TRL/MLflow).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from r2w.caching import result_dir
from r2w.datasets import verify_dataset


def _run(data: Path):
    """A run under a model name of its own: a rerun on the inputs a version was trained on would stop with
    'nothing new since vN' (issue 26) before the stages whose stale cache these tests damage."""
    from flows.retrain import retrain

    name = f"r2w-stale-{uuid.uuid4().hex[:8]}"
    return retrain(config="test", overrides={"data_dir": str(data), "registry": {"model_name": name}})


def _assert_datasets_verify(data: Path) -> None:
    manifests = list((data / "datasets").glob("*/*/manifest.json"))
    assert manifests, "no dataset stored"
    bad = [reason for m in manifests if (reason := verify_dataset(m.parent))]
    assert not bad, bad


def _assert_complete(summary) -> None:
    assert summary.finished_at and summary.gate_passed, summary.reasons
    assert summary.registered_version, summary.reasons


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One complete run; the tests below damage its data dir in turn and rerun (order matters: file order)."""
    data = tmp_path_factory.mktemp("stale") / "data"
    summary = _run(data)
    _assert_complete(summary)
    return data, summary


def test_results_are_stored_under_the_data_dir(first_run):
    """Not in ~/.prefect/storage: deleting or moving a data dir takes its cache with it, and two projects
    on one machine never read each other's results."""
    data, _ = first_run
    stored = [p for p in result_dir(data).rglob("*") if p.is_file()]
    assert len(stored) >= 4, f"expected collect/hints/teach/train/evaluate results under {result_dir(data)}"


def test_rerun_after_the_datasets_were_deleted_recomputes_them(first_run):
    data, _ = first_run
    shutil.rmtree(data / "datasets")
    summary = _run(data)
    _assert_complete(summary)
    assert summary.stage_states["collect"] == "Completed", summary.stage_states  # not a stale cache hit
    assert summary.stage_states["teach"] == "Completed", summary.stage_states
    _assert_datasets_verify(data)


def test_rerun_after_a_dataset_file_was_corrupted_rewrites_it(first_run):
    """A damaged dataset is neither read (cache hit) nor kept (the idempotent write would skip it)."""
    data, _ = first_run
    failures = next((data / "datasets" / "failures").glob("*/data.parquet"))
    failures.write_bytes(b"not parquet")
    _tamper(next((data / "datasets" / "trajectories").glob("*/data.parquet")))  # valid Parquet, wrong content
    summary = _run(data)
    _assert_complete(summary)
    assert summary.stage_states["collect"] == "Completed" and summary.stage_states["teach"] == "Completed"
    _assert_datasets_verify(data)


def test_rerun_after_students_and_hint_store_were_deleted(first_run):
    """Folders a result names (student adapter/merged) and the hint store a cached extraction filled."""
    data, _ = first_run
    shutil.rmtree(data / "students")
    shutil.rmtree(data / "chroma")
    summary = _run(data)
    _assert_complete(summary)
    assert summary.stage_states["train"] == "Completed", summary.stage_states
    assert summary.stage_states["hints"] == "Completed", summary.stage_states
    assert summary.hints_active > 0


def test_rerun_after_the_data_dir_was_moved(first_run):
    """Rerun both where the data dir was (now empty) and where it went."""
    data, _ = first_run
    moved = data.with_name("data-moved")
    shutil.move(data, moved)
    _assert_complete(_run(data))
    _assert_datasets_verify(data)
    _assert_complete(_run(moved))
    _assert_datasets_verify(moved)


def _tamper(path: Path) -> None:
    """Change one record's text and write the file back: it still reads, only its content hash tells."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    rows[0]["json"] = rows[0]["json"].replace('"success":true', '"success":false', 1)
    assert rows and '"success":false' in rows[0]["json"]
    pq.write_table(pa.Table.from_pylist(rows), path)
