"""Replay set: the base agent's own answers on other reasoning-gym families become SFT rows."""

from __future__ import annotations

from types import SimpleNamespace

from r2w.backends.base import SamplingParams
from r2w.backends.hf import TransformersBackend
from r2w.config import ReplaySettings, load_config
from r2w.contracts import DistillExample
from r2w.datasets import load_records
from r2w.rollout import draw_key
from tasks.replay import build_replay_set


def test_replay_rows_are_the_base_agents_own_answers(tiny_model, tmp_path):
    cfg = load_config("test", {"data_dir": str(tmp_path)})
    # the tiny random model's greedy answer decodes to '' (it would be skipped): sample one, seeded
    replay = ReplaySettings(families=["letter_counting", "spell_backward"], examples=4, temperature=1.0)
    fresh = lambda: TransformersBackend(tiny_model, dtype="float32")  # noqa: E731 - a new backend = same seeds
    result = build_replay_set(cfg, fresh(), replay)

    rows = load_records(result.examples.path, DistillExample)
    assert result.kept + result.empty == 4 and len(rows) == result.kept == 4
    assert result.examples.kind == "replay-examples" and result.examples.hash
    for row, family in zip(rows, ["letter_counting", "spell_backward"] * 2, strict=True):
        assert row.category == "replay" and row.split == "train"
        assert row.task_id.startswith(f"replay:reasoning_gym/{family}/train/")
        assert "valid actions" not in row.prompt[-1].content.lower()  # a free-text question, as the agent sees it
    # each target is exactly what the base answers to that prompt (no gold label, no new knowledge): the same
    # prompts sampled with the batch's own draw key (r2w.rollout.draw_key: the batch's jobs and step)
    batch = [SimpleNamespace(task=SimpleNamespace(task_id=r.task_id.removeprefix("replay:")), sample_index=0, steps=[])
             for r in rows]  # fmt: skip
    draw = draw_key(cfg.runtime.seed, "replay", batch)
    params = SamplingParams(
        n=1, temperature=1.0, max_tokens=cfg.agent.answer_max_new_tokens, seed=cfg.runtime.seed, draw=draw
    )
    regenerated = fresh().generate([r.prompt for r in rows], params)
    assert [r.completion for r in rows] == [c.texts[0].strip() for c in regenerated]
    # same inputs, same stored version (content-hashed, idempotent)
    assert build_replay_set(cfg, fresh(), replay).examples.hash == result.examples.hash


def test_empty_base_answers_are_skipped_and_counted(tiny_backend, tmp_path):
    cfg = load_config("test", {"data_dir": str(tmp_path)})
    greedy = build_replay_set(cfg, tiny_backend, ReplaySettings(families=["letter_counting"], examples=2))
    assert (greedy.kept, greedy.empty, greedy.examples.rows) == (0, 2, 0)  # the tiny model's greedy reply is ''
