"""Distill stage on the tiny model: hint-free prompts, leak checks, task-level split, training, resume."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from r2w.runtime import configure_environment

configure_environment(Path(tempfile.gettempdir()) / "r2w-test-data")  # before prefect/transformers are imported

import pytest  # noqa: E402
import torch  # noqa: E402

from prompts.agent import HINTS_CLOSE, HINTS_OPEN, build_messages, render_hints_block  # noqa: E402
from r2w.config import DistillConfig, LoraConfig  # noqa: E402
from r2w.contracts import DistillExample, Episode, Hint, Step, Trajectory  # noqa: E402
from r2w.models import resolve_model  # noqa: E402
from tasks.distill import PromptMismatchError, build_examples, train_sft  # noqa: E402

torch.set_num_threads(1)

HINTS = [
    Hint(
        hint_id=Hint.make_id("Open a closed container before you try to put an item inside it.", "twc"),
        text="Open a closed container before you try to put an item inside it.",
        applicability="When the target container is closed",
        category="twc",
    ),
    Hint(
        hint_id=Hint.make_id("Take the misplaced item first, then look for where it belongs.", "twc"),
        text="Take the misplaced item first, then look for where it belongs.",
        applicability="When an item is lying on the floor",
        category="twc",
    ),
]
ITEMS = [
    ("red apple", "fridge"),
    ("white socks", "dresser"),
    ("clean plate", "cupboard"),
    ("banana", "fridge"),
    ("blue shoe", "shoe cabinet"),
    ("dirty towel", "laundry basket"),
    ("milk", "fridge"),
    ("pen", "desk drawer"),
    ("book", "bookcase"),
    ("mug", "cupboard"),
]


def make_trajectory(task_n: int, hints: list[Hint] = HINTS, traj_n: int = 0, plant: dict | None = None) -> Trajectory:
    """A successful twc-style teacher episode whose prompts carry the rendered hints block."""
    item, place = ITEMS[task_n % len(ITEMS)]
    task = f"Tidy up the house: put every misplaced item where it belongs (game {task_n})."
    actions = [f"take {item}", f"open {place}", f"put {item} in {place}"]
    observations = [
        f"You are in the kitchen. You see a closed {place}. A {item} is on the floor.",
        f"You take the {item}. The {place} is closed.",
        f"You open the {place}. It is empty.",
    ]
    block = render_hints_block(hints)
    steps, history = [], []
    for i, (obs, action) in enumerate(zip(observations, actions, strict=True)):
        obs = (plant or {}).get(("obs", i), obs)
        action = (plant or {}).get(("action", i), action)
        valid = sorted({*actions, "look around", "inventory", f"close {place}"})
        prompt = build_messages(task, obs, valid, history[-3:], hints_block=block)
        steps.append(Step(index=i, observation=obs, valid_actions=valid, prompt=prompt, response=action, action=action))
        history.append((action, obs))
    episode = Episode(
        episode_id=f"ep-{task_n}-{traj_n}",
        env="twx",
        category="twc",
        task_id=f"twc-{task_n}",
        split="train",
        seed=task_n,
        task=task,
        steps=steps,
        success=True,
        score=1.0,
        hint_ids=[h.hint_id for h in hints],
    )
    return Trajectory(
        trajectory_id=f"tr-{task_n}-{traj_n}", episode=episode, hint_ids=episode.hint_ids, hints_block=block
    )


def cfg(**kw) -> DistillConfig:
    base = dict(validation_fraction=0.0, max_examples_per_task=40)
    return DistillConfig(**{**base, **kw})


def test_hints_block_removed_and_prompt_is_base_prompt():
    traj = make_trajectory(0)
    assert HINTS_OPEN in traj.episode.steps[0].prompt[0].content  # the teacher did see the hints
    examples, counts = build_examples([traj], HINTS, cfg())
    assert counts["steps_in"] == 3 and counts["hint_block_removed"] == 3 and counts["train"] == 3
    history = []
    for step, example in zip(traj.episode.steps, examples, strict=True):
        expected = build_messages(traj.episode.task, step.observation, step.valid_actions, history[-3:], hints_block="")
        assert [m.model_dump_json() for m in example.prompt] == [m.model_dump_json() for m in expected]
        assert all(HINTS_OPEN not in m.content and HINTS_CLOSE not in m.content for m in example.prompt)
        assert example.completion == step.action
        history.append((step.action, step.observation))
    # content-addressed ids: same content, same id
    again, _ = build_examples([traj], HINTS, cfg())
    assert [e.example_id for e in again] == [e.example_id for e in examples]


def test_prompt_that_is_not_the_base_prompt_is_refused():
    traj = make_trajectory(0)
    # a teacher prompt whose hints went somewhere else than the recorded block must not be trained on
    tampered = traj.model_copy(deep=True)
    tampered.episode.steps[1].prompt[0].content += "\nAlways open containers first."
    with pytest.raises(PromptMismatchError):
        build_examples([tampered], HINTS, cfg())


def test_leakage_planted_in_prompt_and_completion_is_counted_and_dropped():
    hint = HINTS[0].text
    fuzzy = "open a closed container before you try to put an item in it"  # a near-copy, lower case, no period
    exact = make_trajectory(1, plant={("obs", 2): f"A note on the wall says: {hint}"})
    near = make_trajectory(2, plant={("obs", 2): f"Scrawled on the cupboard: {fuzzy}"})
    says = make_trajectory(3, plant={("action", 2): "put banana in fridge as the hint says"})
    control = make_trajectory(4, plant={("obs", 2): "The shoe cabinet is closed. You put the blue shoe on the floor."})
    examples, counts = build_examples([exact, near, says, control], HINTS, cfg())
    assert counts["leak_prompt"] == 2 and counts["leak_completion"] == 1
    assert counts["train"] == 12 - 3 and len(examples) == 9
    dropped = {(e.trajectory_id, e.prompt[1].content) for e in examples}
    assert not any(hint.lower() in content.lower() or fuzzy in content for _, content in dropped)
    assert all("hint" not in e.completion for e in examples)
    assert sum(e.trajectory_id == "tr-4-0" for e in examples) == 3  # sharing words with a hint is not a leak


def test_duplicates_and_per_task_cap():
    trajectories = [make_trajectory(4, traj_n=0), make_trajectory(4, traj_n=1), make_trajectory(5)]
    examples, counts = build_examples(trajectories, HINTS, cfg(max_examples_per_task=2))
    assert counts["duplicates"] == 3  # the second trajectory of task 4 repeats the first
    assert counts["capped"] == 2  # 3 unique examples per task, 2 kept
    assert counts["train"] == 4 and len({e.example_id for e in examples}) == 4


def test_validation_split_is_by_task():
    trajectories = [make_trajectory(n) for n in range(10)] + [make_trajectory(n, traj_n=1) for n in range(3)]
    examples, counts = build_examples(trajectories, HINTS, cfg(validation_fraction=0.3))
    train_tasks = {e.task_id for e in examples if e.split == "train"}
    val_tasks = {e.task_id for e in examples if e.split == "validation"}
    assert len(val_tasks) == 3 and len(train_tasks) == 7 and not train_tasks & val_tasks
    assert counts["validation"] == 9 and counts["train"] == 21
    again, _ = build_examples(list(reversed(trajectories)), HINTS, cfg(validation_fraction=0.3))
    assert {e.task_id for e in again if e.split == "validation"} == val_tasks  # deterministic, order-free
    # at least one task once there are two; never with one task
    two, _ = build_examples([make_trajectory(0), make_trajectory(1)], HINTS, cfg(validation_fraction=0.05))
    assert sorted(e.split for e in two).count("validation") == 3
    one, _ = build_examples([make_trajectory(0)], HINTS, cfg(validation_fraction=0.5))
    assert {e.split for e in one} == {"train"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return resolve_model("tiny", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def examples() -> list[DistillExample]:
    trajectories = [make_trajectory(n) for n in range(8)]
    out, _ = build_examples(trajectories, HINTS, cfg(validation_fraction=0.25))
    return out


TRAIN_CFG = dict(learning_rate=5e-3, batch_size=4, bf16=True, gradient_checkpointing=False, lora=LoraConfig(r=8))


def completion_logprob(model_dir: Path, example: DistillExample, adapter: Path | None = None) -> float:
    """Mean log-probability of the completion tokens given the prompt (independent of train_sft's own check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    messages = [m.model_dump() for m in example.prompt]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": example.completion}], tokenize=False)
    ids = tok(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        logp = model.eval()(input_ids=ids).logits.float().log_softmax(-1)
    targets = ids[0, n_prompt:]
    return logp[0, n_prompt - 1 : -1].gather(-1, targets[:, None]).mean().item()


def test_training_lowers_loss_and_saved_student_round_trips(tiny, examples, tmp_path):
    art = train_sft(examples, tiny, cfg(max_steps=12, **TRAIN_CFG), tmp_path / "student", seed=0)
    assert art.steps == 12 and len(art.train_losses) == 12 and art.resumed_from_step == 0
    first, last = sum(art.train_losses[:2]) / 2, sum(art.train_losses[-2:]) / 2
    assert last < first - 0.1, art.train_losses  # the random tiny model's loss floor is near ln(vocab) - 2
    assert art.eval_loss is not None and math.isfinite(art.eval_loss)
    assert art.roundtrip_max_abs_diff < 2e-3 and art.adapter_logit_delta > 0.1
    assert art.tokens_per_s > 0 and art.tokens_trained > 12 * 4 * 20
    assert (art.adapter_dir / "adapter_config.json").is_file() and (art.merged_dir / "config.json").is_file()
    # independent check: the student (adapter and merged) makes the teacher's actions likelier than the base does
    train_example = next(e for e in examples if e.split == "train")
    base = completion_logprob(tiny, train_example)
    merged = completion_logprob(art.merged_dir, train_example)
    adapter = completion_logprob(tiny, train_example, adapter=art.adapter_dir)
    assert merged > base + 0.1 and abs(merged - adapter) < 1e-3


def test_killed_run_resumes_from_last_checkpoint(tiny, examples, tmp_path):
    out = tmp_path / "student"
    first = train_sft(examples, tiny, cfg(max_steps=4, **TRAIN_CFG), out, save_steps=2)
    assert first.resumed_from_step == 0 and (out / "checkpoints" / "checkpoint-4").is_dir()
    (out / "checkpoints" / "checkpoint-5").mkdir()  # a save cut short by the kill: no trainer_state.json
    second = train_sft(examples, tiny, cfg(max_steps=6, **TRAIN_CFG), out, save_steps=2, resume=True)
    assert second.resumed_from_step == 4 and second.steps == 6
    assert second.train_losses[:4] == first.train_losses and len(second.train_losses) == 6  # history restored
    assert 0 < second.tokens_trained < first.tokens_trained  # only steps 5-6 were trained in the second call
    assert (out / "checkpoints" / "checkpoint-6").is_dir() and not (out / "checkpoints" / "checkpoint-5").exists()
    # a different config never resumes someone else's checkpoints
    other = train_sft(examples, tiny, cfg(max_steps=2, **{**TRAIN_CFG, "learning_rate": 1e-3}), out, save_steps=2)
    assert other.resumed_from_step == 0 and other.steps == 2
