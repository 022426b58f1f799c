"""Distill stage on the tiny model: hint-free prompts, leak checks, task-level split, training, resume."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from r2w.runtime import configure_environment

configure_environment(Path(tempfile.gettempdir()) / "r2w-test-data")  # before prefect/transformers are imported

import pytest  # noqa: E402
import torch  # noqa: E402

from r2w.agent_prompt import HINTS_CLOSE, HINTS_OPEN, build_messages, render_hints_block  # noqa: E402
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
    train = [e for e in examples if e.split == "train"]
    assert agent_actions(art.merged_dir, train) != agent_actions(tiny, train)  # the greedy agent acts differently


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


def test_training_seed_alone_decides_the_adapter(tiny, examples, tmp_path):
    """distill.seed measures run-to-run spread on fixed teacher data: equal seeds must give equal adapters
    (LoRA init included: TRL seeds before wrapping the model), different seeds different ones."""
    from safetensors.torch import load_file

    def adapter(seed: int, name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(1000 + seed * 7 + len(name))  # whatever ran before must not decide the LoRA init
        art = train_sft(examples, tiny, cfg(max_steps=2, **TRAIN_CFG), tmp_path / name, seed=seed, resume=False)
        return load_file(art.adapter_dir / "adapter_model.safetensors")

    first, again, other = adapter(3, "a"), adapter(3, "again"), adapter(4, "b")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


def test_train_seed_defaults_to_the_run_seed():
    from r2w.config import load_config

    assert load_config("demo", {"runtime.seed": 5}).train_seed == 5
    assert load_config("demo", {"runtime.seed": 5, "distill.seed": 2}).train_seed == 2


# ----------------------------------------------------------------------------------- DPO, on-policy, champion


def agent_actions(model_dir: Path, examples: list[DistillExample], adapter: Path | None = None) -> list[str]:
    """The agent's greedy action in each example's state, constrained to the valid actions as every stage plays."""
    from r2w.backends import SamplingParams
    from r2w.backends.hf import TransformersBackend

    backend = TransformersBackend(model_dir, adapter_path=adapter, dtype="float32")
    valid = [e.prompt[-1].content.split("Valid actions: ")[1].split("\n")[0].split(", ") for e in examples]
    completions = backend.generate([e.prompt for e in examples], SamplingParams(max_tokens=16), choices=valid)
    return [c.texts[0] for c in completions]


def hinted_teacher_kl(model_dir: Path, examples: list[DistillExample], adapter: Path | None = None) -> float:
    """Mean per-token KL(model without hints || base model with the hints block) along the teacher's actions."""
    from contextlib import nullcontext

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2w.distill_data import teacher_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()

    def logp(messages: list[dict], action: list[int]) -> torch.Tensor:
        ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))["input_ids"]
        out = model(input_ids=torch.tensor([ids + action])).logits[0, len(ids) - 1 : -1]
        return out.float().log_softmax(-1)

    kls = []
    with torch.inference_mode():
        for e in examples:
            action = tok(e.completion, add_special_tokens=False)["input_ids"]
            student = logp([m.model_dump() for m in e.prompt], action)
            with model.disable_adapter() if adapter is not None else nullcontext():
                teacher = logp(teacher_prompt([m.model_dump() for m in e.prompt], e.teacher_context), action)
            kls.append((student.exp() * (student - teacher)).sum(-1).mean().item())
    return sum(kls) / len(kls)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory, tiny_model):
    """Real pipeline output: the base agent's collected episodes and the hinted teacher's kept trajectories (TWX).

    A fresh backend, not the session one: its sampling seed advances per call, so sharing it would
    make these rollouts depend on which tests ran before.
    """
    from r2w.backends.hf import TransformersBackend
    from r2w.config import load_config
    from r2w.datasets import load_records
    from tasks.collect import collect_failures
    from tasks.teach import teach

    backend = TransformersBackend(tiny_model, dtype="float32")
    run_cfg = load_config("test", {"data_dir": str(tmp_path_factory.mktemp("pipeline"))})
    collected = collect_failures(run_cfg, backend)
    taught = teach(run_cfg, backend, lambda category, query, k: HINTS[:k], "test-hints")
    return load_records(collected.episodes, Episode), load_records(taught.trajectories, Trajectory)


def base_episode(task_n: int, episode_id: str, success: bool = False, plant: dict | None = None) -> Episode:
    """The base agent's episode of the same synthetic task: same builder, no hints block."""
    episode = make_trajectory(task_n, hints=[], plant=plant).episode
    return episode.model_copy(update={"episode_id": episode_id, "success": success, "hint_ids": []})


def test_dpo_pairs_at_the_divergence_of_a_shared_prefix():
    from tasks.distill import build_dpo_pairs

    teachers = [make_trajectory(0), make_trajectory(1), make_trajectory(2), make_trajectory(3)]
    teachers.append(make_trajectory(2, traj_n=1, plant={("action", 1): "look around"}))  # another winner
    bases = [
        base_episode(0, "b0", plant={("action", 1): "look around"}),  # diverges at step 1: a pair
        base_episode(1, "b1", plant={("action", 0): "take white socks as the hint says"}),  # leaks in rejected
        base_episode(2, "b2", plant={("action", 1): "look around"}),  # a successful teacher did that too
        base_episode(3, "b3", plant={("obs", 0): "You are in the garden."}),  # another game state from step 0
        base_episode(0, "b4", success=True),
    ]
    pairs, counts = build_dpo_pairs(teachers, bases, HINTS, cfg())
    assert counts["base_successes"] == 1 and counts["base_failures"] == 4 and counts["episode_pairs"] == 5
    assert counts["no_shared_state"] == 1 and counts["no_divergence"] == 1 and counts["diverged"] == 3
    assert counts["leak_completion"] == 1 and counts["rejected_also_chosen"] == 1 and counts["train"] == 1
    (pair,) = pairs
    assert (pair.completion, pair.rejected, pair.task_id) == ("open fridge", "look around", "twc-0")
    assert pair.prompt == bases[0].steps[1].prompt  # the base agent's exact (hint-free) prompt in that state
    assert all(HINTS_OPEN not in m.content for m in pair.prompt)
    with pytest.raises(PromptMismatchError):  # a hinted episode passed off as the base agent's is refused
        build_dpo_pairs(teachers[:1], [make_trajectory(0).episode.model_copy(update={"success": False})], HINTS, cfg())


def test_dpo_pairs_from_real_rollouts(rollouts):
    from tasks.distill import build_dpo_pairs, student_prompt

    episodes, trajectories = rollouts
    pairs, counts = build_dpo_pairs(trajectories, episodes, HINTS, cfg())
    assert pairs and counts["diverged"] >= 1 and counts["base_failures"] >= 1, counts
    by_id = {t.trajectory_id: t for t in trajectories}
    for pair in pairs:
        traj = by_id[pair.trajectory_id]
        prompts = [student_prompt(s.prompt, traj.hints_block)[0] for s in traj.episode.steps]
        i = prompts.index(pair.prompt)
        assert traj.episode.steps[i].action == pair.completion != pair.rejected
        assert pair.rejected in traj.episode.steps[i].valid_actions
        # some failed base episode of the task took the teacher's actions up to i, then the rejected one
        assert any(
            b.task_id == pair.task_id
            and not b.success
            and len(b.steps) > i
            and b.steps[i].prompt == pair.prompt
            and b.steps[i].action == pair.rejected
            and [s.action for s in b.steps[:i]] == [s.action for s in traj.episode.steps[:i]]
            for b in episodes
        )


DPO_CFG = dict(TRAIN_CFG, method="dpo", max_steps=6)


def test_dpo_training_raises_the_margin_and_changes_the_agents_actions(rollouts, tiny_model, tmp_path):
    from tasks.distill import build_training_set, train_student

    episodes, trajectories = rollouts
    pairs, _ = build_training_set(trajectories, HINTS, cfg(**DPO_CFG), 0, episodes)
    art = train_student(pairs, tiny_model, cfg(**DPO_CFG), tmp_path / "dpo")
    assert art.method == "dpo" and art.steps == 6 and len(art.train_losses) == 6
    assert abs(art.train_losses[0] - math.log(2)) < 1e-3  # adapter starts at zero: policy == reference
    assert sum(art.train_losses[-2:]) / 2 < math.log(2) - 0.05, art.train_losses
    margins = art.train_metrics["rewards/margins"]
    assert margins[0] == pytest.approx(0.0, abs=1e-4) and sum(margins[-2:]) / 2 > 0.3, margins
    assert art.roundtrip_max_abs_diff < 2e-3 and art.adapter_logit_delta > 0.1
    before, after = agent_actions(tiny_model, pairs), agent_actions(art.merged_dir, pairs)
    assert before != after  # the greedy agent acts differently in the trained states ...
    chosen = [p.completion for p in pairs]
    assert sum(a == c for a, c in zip(after, chosen, strict=True)) > sum(
        b == c for b, c in zip(before, chosen, strict=True)
    )  # ... and picks the teacher's action more often


def test_onpolicy_distillation_lowers_the_kl_to_the_hinted_teacher(rollouts, tiny_model, tmp_path):
    from r2w.distill_data import teacher_prompt
    from tasks.distill import build_training_set, train_student

    # On the tiny random model hints barely move the output (KL ~3e-5 nats/token at the start): the student starts
    # next to its teacher, so Adam's ~lr-sized steps must be small or they overshoot.
    onpolicy = dict(TRAIN_CFG, method="onpolicy", max_steps=6, learning_rate=3e-4)
    _, trajectories = rollouts
    examples, _ = build_training_set(trajectories, HINTS, cfg(**onpolicy), 0)
    # the teacher scores with exactly the prompt the hinted teacher was rolled out with
    step_prompts = {
        (t.trajectory_id, json.dumps([m.model_dump() for m in s.prompt])) for t in trajectories for s in t.episode.steps
    }
    for e in examples:
        hinted = teacher_prompt([m.model_dump() for m in e.prompt], e.teacher_context)
        assert (e.trajectory_id, json.dumps(hinted)) in step_prompts
    states = examples[:4]  # a fixed handful of states, so the loss is comparable from step to step
    art = train_student(states, tiny_model, cfg(**onpolicy), tmp_path / "onpolicy")
    kl = art.train_metrics["self_distillation/distillation_loss"]
    assert art.method == "onpolicy" and art.steps == 6 and len(kl) == 6 and kl[0] > 0
    assert sum(kl[-3:]) / 3 < 0.7 * kl[0], kl  # reverse KL on the student's fresh samples (step 1: the base's)
    # independent, on fixed text (the teacher's actions): the hint-free student moved toward the hinted base
    assert hinted_teacher_kl(tiny_model, states, art.adapter_dir) < 0.5 * hinted_teacher_kl(tiny_model, states)
    assert art.roundtrip_max_abs_diff < 2e-3 and art.adapter_logit_delta > 0


def test_continual_round_trains_on_top_of_the_champion(tiny_model, examples, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2w.config import load_config
    from r2w.tracking import artifact_dir_uri, client_for, start_run
    from tasks.distill import ChampionNotFoundError, resolve_student_base, train_student

    run_cfg = load_config("test", {"data_dir": str(tmp_path / "data"), "distill": {"init_from": "champion"}})
    name = run_cfg.registry.model_name
    client = client_for(run_cfg)
    with pytest.raises(ChampionNotFoundError, match="init_from=champion"):
        resolve_student_base(run_cfg, tiny_model)
    # a champion that differs from the base: a merged folder with perturbed weights, registered as a run artifact
    champion = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        champion.model.layers[0].mlp.down_proj.weight.add_(
            0.05 * torch.randn_like(champion.model.layers[0].mlp.down_proj.weight)
        )
    champion.save_pretrained(tmp_path / "champion")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "champion")
    run_id = start_run(client, run_cfg, "earlier-round")
    client.log_artifacts(run_id, str(tmp_path / "champion"), "student/merged")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=artifact_dir_uri(client, run_id, "student/merged"), run_id=run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)

    start = resolve_student_base(run_cfg, tiny_model)
    assert start.parent_version == "1" and start.path.is_relative_to(tmp_path / "data")
    ids = torch.tensor([[1, 5, 9, 13]])
    logits = {p: completion_free_logits(p, ids) for p in (tiny_model, tmp_path / "champion", start.path)}
    assert torch.equal(logits[start.path], logits[tmp_path / "champion"])
    assert not torch.allclose(logits[start.path], logits[tiny_model])
    art = train_student(examples, start.path, cfg(max_steps=2, **TRAIN_CFG), tmp_path / "s", 0, True, "1")
    assert art.parent_version == "1" and art.base_model == start.path
    # the adapter sits on the champion: the round trip (champion + adapter == trained logits) passed inside
    assert art.roundtrip_max_abs_diff < 2e-3


def completion_free_logits(model_dir: Path, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.inference_mode():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()(input_ids=ids).logits


def test_onpolicy_batch_must_hold_whole_groups_of_samples():
    from r2w.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"distill\.onpolicy\.samples \(3\) must divide .* \(4\)"):
        load_config("test", {"distill": {"method": "onpolicy", "onpolicy": {"samples": 3}}})
    assert load_config("test", {"distill": {"method": "onpolicy", "onpolicy": {"samples": 4}}}).distill.onpolicy.samples


def test_leakage_gate_count_rechecks_the_final_set():
    from r2w.contracts import DistillExample, Hint, Message
    from r2w.distill_data import count_leaks

    hint = Hint(
        hint_id="h-1",
        text="open the wardrobe before you put the shirt in it",
        applicability="when holding clothes",
        category="twc",
    )

    def row(obs: str, completion: str) -> DistillExample:
        prompt = [Message(role="system", content="play"), Message(role="user", content=obs)]
        return DistillExample(
            example_id=obs, task_id="t", category="twc", prompt=prompt, completion=completion, trajectory_id="t-1"
        )

    clean = row("You are in the bedroom.", "open wardrobe")
    leaked = row("Note: open the wardrobe before you put the shirt in it.", "open wardrobe")
    referring = row("You are in the bedroom.", "as the hint says, open wardrobe")
    assert count_leaks([clean], [hint], 85) == 0
    assert count_leaks([clean, leaked, referring], [hint], 85) == 2
