import json

import pytest

from r2w.contracts import Episode, Message, Step
from r2w.datasets import load_records, save_records


def _episode(i: int) -> Episode:
    step = Step(
        index=0,
        observation="You are in the kitchen.",
        valid_actions=["look around", "open fridge"],
        prompt=[Message(role="user", content="hi")],
        response="open fridge",
        action="open fridge",
        prompt_tokens=10,
        completion_tokens=3,
    )
    return Episode(
        episode_id=f"e-{i}",
        env="twx",
        category="twc",
        task_id=f"t{i}",
        split="train",
        seed=i,
        task="tidy",
        steps=[step],
    )


def test_roundtrip_and_content_addressing(tmp_path):
    records = [_episode(i) for i in range(3)]
    ref = save_records(records, tmp_path, "episodes")
    again = save_records(records, tmp_path, "episodes")
    assert ref == again and ref.rows == 3
    assert load_records(ref, Episode) == records
    other = save_records(records[:2], tmp_path, "episodes")
    assert other.hash != ref.hash
    assert len(list((tmp_path / "episodes").iterdir())) == 2  # no temp folders left behind


def test_tampered_manifest_is_detected(tmp_path):
    ref = save_records([_episode(0)], tmp_path, "episodes")
    manifest = tmp_path / "episodes" / ref.hash[:16] / "manifest.json"
    data = json.loads(manifest.read_text())
    data["hash"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="content hash mismatch"):
        load_records(ref, Episode)


def test_empty_dataset_roundtrips(tmp_path):
    ref = save_records([], tmp_path, "failures")
    assert ref.rows == 0 and load_records(ref, Episode) == []
