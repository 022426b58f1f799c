"""Issue 24 point 1: every hint has a lifecycle. Its uplift is measured paired (teacher with vs without it),
a hint that significantly hurts is retired with its evidence in the audit log, and a person can override."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from r2w.config import HintsConfig
from r2w.contracts import Episode, Hint
from r2w.datasets import load_records, save_records
from r2w.hintstore import HintStore
from tasks.uplift import RETIRED_BY, HintUplift, apply_verdicts, retrieval_support, score_hint

CURATED = Path(__file__).resolve().parent.parent / "configs" / "hints" / "twc_curated.jsonl"
runner = CliRunner()


def attempts(outcomes: list[bool], hint: Hint | None) -> list[Episode]:
    """Planted teacher attempts: one per task, with the given outcomes."""
    return [
        Episode(
            episode_id=f"{'with' if hint else 'without'}-{i}",
            env="twx",
            category="twc",
            task_id=f"twx/twc/train/{i}",
            split="train",
            seed=i,
            task="Tidy up the house.",
            success=ok,
            hint_ids=[hint.hint_id] if hint else [],
        )
        for i, ok in enumerate(outcomes)
    ]


@pytest.fixture
def store(tmp_path: Path) -> HintStore:
    s = HintStore(HintsConfig(collection="r2w-hints-test"), tmp_path / "data")
    s.import_jsonl(CURATED, "curated", by="curator", reason="seed pack")
    return s


def test_uplift_from_planted_episodes_retires_a_harmful_hint_and_keeps_a_helpful_one(store: HintStore) -> None:
    harmful, helpful, noisy = store.list()[:3]
    rows = [
        score_hint(harmful, attempts([False] * 10, harmful), attempts([True] * 10, None)),
        score_hint(helpful, attempts([True] * 10, helpful), attempts([False] * 10, None)),
        score_hint(
            noisy, attempts([False, False] + [True] * 8, noisy), attempts([True, True, False] + [True] * 7, None)
        ),
    ]
    bad, good, noise = rows
    assert (bad.n, bad.gained, bad.lost, bad.uplift) == (10, 0, 10, -1.0)
    assert bad.p_value == pytest.approx(2 / 2**10)  # exact two-sided McNemar: 2 * 0.5^10
    assert (bad.without_successes, bad.with_successes) == (10, 0) and bad.without_ci[0] > 0.6
    assert (noise.gained, noise.lost) == (1, 2) and noise.p_value == 1.0
    assert good.uplift == 1.0 and good.uplift_ci[0] > 0

    judged = {r.hint_id: r for r in apply_verdicts(store, rows, alpha=0.05)}
    assert judged[harmful.hint_id].verdict == "retired"
    assert judged[helpful.hint_id].verdict == judged[noisy.hint_id].verdict == "kept"
    assert store.get(harmful.hint_id).status == "disabled"
    assert store.get(helpful.hint_id).status == store.get(noisy.hint_id).status == "active"
    assert harmful.hint_id not in {h.hint_id for h in store.retrieve("twc", harmful.text, 5)}
    last = store.history(harmful.hint_id)[-1]
    assert (last["action"], last["by"], last["status"]) == ("retire", RETIRED_BY, "disabled")
    assert "lost 10, gained 0" in last["reason"] and "p=0.00195" in last["reason"]
    assert last["evidence"] == {
        "n": 10,
        "gained": 0,
        "lost": 10,
        "uplift": -1.0,
        "p_value": bad.p_value,
        "arms": "alone",
    }
    assert not [e for e in store.history(helpful.hint_id) if e["action"] == "retire"]

    # a person overrides: reinstating a retired hint needs a reason, is audited, and sticks
    with pytest.raises(ValueError, match="give a reason"):
        store.set_status(harmful.hint_id, "active", by="alice")
    store.set_status(harmful.hint_id, "active", by="alice", reason="right for cookingworld, measured on too few tasks")
    last = store.history(harmful.hint_id)[-1]
    assert (last["action"], last["by"], last["previous_status"], last["status"]) == (
        "reinstate", "alice", "disabled", "active"
    )  # fmt: skip
    again = {r.hint_id: r for r in apply_verdicts(store, rows, alpha=0.05)}
    assert again[harmful.hint_id].verdict == "override:alice"
    assert store.get(harmful.hint_id).status == "active"
    assert [e["action"] for e in store.history(harmful.hint_id)].count("retire") == 1

    # a planted pair of arms with nothing in common is an error, not an uplift of 0
    with pytest.raises(ValueError, match="share no"):
        score_hint(helpful, attempts([True], helpful), [])


def test_support_counts_each_teacher_episode_once_whatever_the_file_times(tmp_path: Path) -> None:
    """Two teach datasets share episodes (a rerun's leftovers): each episode counts once, and touching
    the folders (a copied data dir) changes nothing."""
    hint = Hint(hint_id="h-1", text="WHEN a door is closed: open it", applicability="a door", category="twc")
    first = attempts([True, False, True], hint)
    second = attempts([True, False, True, False], hint)  # the first three again, and one more failure
    root = tmp_path / "datasets"
    refs = [save_records(first, root, "teacher-episodes"), save_records(second, root, "teacher-episodes")]
    expected = {"h-1": (4, 2)}
    assert retrieval_support(tmp_path) == expected
    for i, ref in enumerate(refs):  # the older dataset looks newest now
        os.utime(ref.path, (1e9 + i, 1e9 + i) if i else (2e9, 2e9))
    assert retrieval_support(tmp_path) == expected


def cli(data_dir: Path, *args: str, code: int = 0, sets: tuple[str, ...] = ()) -> str:
    argv = ["hints", *args, "--config", "test", "--set", f"data_dir={data_dir}"]
    for s in sets:
        argv += ["--set", s]
    result = runner.invoke(app, argv, env={"COLUMNS": "400"})
    assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
    return " ".join(result.output.split())


def test_retire_and_reinstate_by_hand_are_audited(store: HintStore) -> None:
    data = store.data_dir
    target = store.list()[0]
    assert "retired" in cli(data, "retire", target.hint_id, "--why", "tells the agent to loop", "--by", "bob")
    assert HintStore(store.cfg, data).get(target.hint_id).status == "disabled"
    assert "give a reason" in cli(data, "enable", target.hint_id, code=2)
    cli(data, "enable", target.hint_id, "--reason", "fixed upstream", "--by", "carol")
    log = [(e["action"], e["by"], e["reason"]) for e in HintStore(store.cfg, data).history(target.hint_id)]
    assert log[-2:] == [("retire", "bob", "tells the agent to loop"), ("reinstate", "carol", "fixed upstream")]
    assert "reinstate" in cli(data, "history", "--hint", target.hint_id)
    assert "no hint" in cli(data, "retire", "h-missing", "--why", "x", code=2)


def test_uplift_cli_plays_both_arms_and_prints_a_row_per_hint(store: HintStore, tiny_model: Path) -> None:
    data = store.data_dir
    first, second = store.list()[:2]
    out = cli(data, "uplift", "--tasks", "2", "--hint", first.hint_id, "--hint", second.hint_id, "--no-retire",
              sets=(f"models.base={tiny_model}", "env.max_steps=3"))  # fmt: skip
    assert first.hint_id in out and second.hint_id in out and "without (baseline)" in out
    assert "2 hints, 6 teacher episodes" in out  # the shared no-hint arm (2 tasks) + 2 tasks per hint
    (folder,) = (data / "datasets" / "hint-uplift").iterdir()
    rows = {r.hint_id: r for r in load_records(folder, HintUplift)}
    assert set(rows) == {first.hint_id, second.hint_id}
    for r in rows.values():
        assert r.n == 2 and r.gained + r.lost <= r.n
        assert r.with_successes - r.without_successes == r.gained - r.lost
        assert r.uplift == pytest.approx((r.gained - r.lost) / r.n)
        assert r.verdict in ("kept", "would retire") and r.drawn_from == len(
            store.get(r.hint_id).provenance.episode_ids
        )
    # the no-hint arm is one per category, so both rows share their baseline
    assert len({r.without_successes for r in rows.values()}) == 1
    assert "--arms: expected 'alone' or 'ablate'" in cli(data, "uplift", "--arms", "nope", code=2)
