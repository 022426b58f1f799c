"""Distilling tool-calling conversations on the tiny model: one row per successful episode, the loss on
exactly the assistant turns (tool calls included), leak checks that read tool-call arguments, and DPO pairs
at the first assistant turn where teacher and base part."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation.environments.examples.helpdesk import HelpDesk
from r2w.agent_prompt import HINTS_OPEN, build_chat_messages, render_hints_block
from r2w.config import DistillConfig, LoraConfig
from r2w.contracts import DistillExample, Hint, Message, ToolCall, ToolFunction, Trajectory
from r2w.distill_data import count_leaks, to_sft_dataset
from r2w.rollout import Decision, run_chat_episodes
from r2w.tool_calls import parse_tool_calls, render_turn
from r2w.trainers import _sft_trainer, train_sft
from r2w.training import assistant_masking_tokenizer, load_model, load_tokenizer, trainer_settings
from tasks.distill import build_dpo_pairs, build_examples

torch.set_num_threads(1)

HINT = Hint(
    hint_id=Hint.make_id('Refund the "amount" the lookup returned, never a guess.', "refund"),
    text='Refund the "amount" the lookup returned, never a guess.',
    applicability="When a customer asks for a refund",
    category="refund",
)


class ScriptedDesk:
    """A scripted agent (a named fake, no model) that records the real prompt of every turn: looks the order up,
    refunds `fraction` of it (with an optional `note` argument), then answers."""

    name = model_id = "scripted-desk"

    def __init__(self, fraction: float = 1.0, note: str | None = None, wrong_order: bool = False) -> None:
        self.fraction, self.note, self.wrong_order = fraction, note, wrong_order

    def act_chat(self, states):
        out = []
        for s in states:
            order = next(m.content for m in s.conversation if m.role == "user").split("order ")[1].split(" ")[0]
            if not s.steps:
                args = {"order_id": "A-0000" if self.wrong_order else order}
                turn = Message(role="assistant", tool_calls=[_call("lookup_order", args, 0)])
            elif len(s.steps) == 1:
                amount = json.loads(s.conversation[-1].content).get("amount", 1) * self.fraction
                args = {"order_id": order, "amount": amount, **({"note": self.note} if self.note else {})}
                turn = Message(role="assistant", tool_calls=[_call("refund", args, 1)])
            else:
                turn = Message(role="assistant", content="Refunded.")
            prompt = build_chat_messages(s.conversation, s.tools, s.hints_block)
            out.append(Decision(action=render_turn(turn), response=render_turn(turn), prompt=prompt, turn=turn))
        return out


def _call(name: str, args: dict, turn: int) -> ToolCall:
    return ToolCall(id=f"call_{turn}_0", function=ToolFunction(name=name, arguments=json.dumps(args)))


def episodes(policy, n: int = 4, hints: list[Hint] | None = None):
    factory = HelpDesk()
    block = render_hints_block(hints or [])
    hints_for = (lambda *_: ([h.hint_id for h in hints], block)) if hints else None
    return run_chat_episodes(factory, [(t, 0) for t in factory.tasks("train", n)], policy, 5, hints_for=hints_for)


def trajectories(policy, n: int = 4) -> list[Trajectory]:
    block = render_hints_block([HINT])
    return [
        Trajectory(trajectory_id=f"t-{e.task_id}", episode=e, hint_ids=[HINT.hint_id], hints_block=block)
        for e in episodes(policy, n, [HINT])
    ]


def cfg(**kw) -> DistillConfig:
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    base = {"validation_fraction": 0.0, "batch_size": 2, "bf16": False, "lora": lora, "max_length": 4096}
    return DistillConfig(**{**base, **kw})


def test_a_successful_tool_episode_is_one_hint_free_conversation():
    examples, counts = build_examples(trajectories(ScriptedDesk()), [HINT], cfg())
    assert len(examples) == 4 and counts["steps_in"] == 12 and counts["hint_block_removed"] == 12
    example = examples[0]
    assert example.loss_on == "assistant_turns" and example.completion == "Refunded."
    roles = [m.role for m in example.prompt]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]  # tool results render as user
    assert '"name": "refund"' in example.prompt[4].content and "<tool_response" in example.prompt[3].content
    assert not any(HINTS_OPEN in m.content for m in example.prompt)
    assert json.loads(DistillExample.model_validate_json(example.model_dump_json()).model_dump_json())["loss_on"]
    one_decision = example.model_copy(update={"loss_on": "completion"})
    assert "loss_on" not in json.loads(one_decision.model_dump_json())  # old rows serialise as before


def masked_text(trainer, tokenizer, row: int = 0) -> tuple[str, str]:
    """What the loss falls on, decoded from the collated labels, and the whole row's text."""
    batch = trainer.data_collator([trainer.train_dataset[row]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    return tokenizer.decode(ids[labels != -100]), tokenizer.decode(ids)


def test_loss_falls_on_exactly_the_assistant_turns_and_a_real_step_trains(tiny_model, tmp_path):
    examples, _ = build_examples(trajectories(ScriptedDesk(), n=4), [HINT], cfg())
    tokenizer = load_tokenizer(tiny_model)
    settings = trainer_settings(cfg(max_steps=2), tmp_path / "ckpt", seed=0)
    trainer = _sft_trainer(cfg(), settings, load_model(tiny_model, torch.float32), tokenizer, examples, [])
    assert trainer.args.assistant_only_loss
    trained, whole = masked_text(trainer, tokenizer)
    messages = [m.model_dump() for m in examples[0].prompt] + [{"role": "assistant", "content": "Refunded."}]
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(turns) == 3 and '"refund"' in turns[1]
    assert trained == "".join(f"{t}<|im_end|>" for t in turns)  # every assistant turn with its end of turn
    assert whole == tokenizer.apply_chat_template(messages, tokenize=False)  # the model's own rendering
    for other in (m["content"] for m in messages if m["role"] != "assistant"):
        assert other not in trained  # no tool result, user turn or system prompt
    art = train_sft(examples, tiny_model, cfg(max_steps=2), tmp_path / "student", seed=0)
    assert art.steps == 2 and all(torch.isfinite(torch.tensor(art.train_losses)))
    assert art.roundtrip_max_abs_diff < 2e-3 and art.adapter_logit_delta > 0


def test_one_decision_rows_train_beside_conversations_with_the_same_loss(tiny_model, tmp_path):
    """A replay-style row (system + user -> answer) next to a conversation: its loss is still its answer only."""
    examples, _ = build_examples(trajectories(ScriptedDesk(), n=2), [HINT], cfg())
    answer = DistillExample(example_id="r1", task_id="rg-1", category="rg", trajectory_id="replay",
                            prompt=[Message(role="system", content="Answer."), Message(role="user", content="2+2?")],
                            completion="4")  # fmt: skip
    tokenizer = load_tokenizer(tiny_model)
    settings = trainer_settings(cfg(max_steps=1), tmp_path / "ckpt", seed=0)
    trainer = _sft_trainer(cfg(), settings, load_model(tiny_model, torch.float32), tokenizer, [answer, *examples], [])
    assert masked_text(trainer, tokenizer, row=0)[0] == "4<|im_end|>"
    assert list(to_sft_dataset([answer]).column_names) == ["prompt", "completion"]  # text games: unchanged rows
    wrong = answer.model_copy(update={"prompt": examples[0].prompt})
    with pytest.raises(ValueError, match="r1: a one-decision row whose prompt has assistant turns"):
        to_sft_dataset([wrong, examples[0]])


def test_a_masking_template_that_renders_differently_is_refused(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(ValueError, match="training conversation 0: the assistant-masking chat template renders"):
        assistant_masking_tokenizer(tokenizer, [[{"role": "user", "content": "hi"}]])


def test_hint_text_planted_in_a_tool_argument_is_caught():
    """Exact matching (ratio 100) so only the decoded arguments can catch it: the call holds the hint JSON-escaped."""
    planted = trajectories(ScriptedDesk(note=HINT.text), n=2)
    clean = trajectories(ScriptedDesk(), n=2)
    examples, counts = build_examples(planted + clean, [HINT], cfg(leakage_fuzzy_ratio=100.0))
    assert counts["leak_completion"] == 2 and len(examples) == 2
    call = planted[0].episode.steps[1].action
    assert HINT.text not in call and HINT.text.replace('"', '\\"') in call
    (leaky,), _ = build_examples(planted[:1], [], cfg())  # built with no hint to check against, then re-checked:
    assert count_leaks([leaky], [HINT], 100.0) == 1  # in an earlier turn of the conversation
    assert count_leaks([leaky.model_copy(update={"prompt": leaky.prompt[:4], "completion": call})], [HINT], 100.0) == 1
    assert count_leaks(examples, [HINT], 100.0) == 0


def test_dpo_pairs_on_chat_turns_come_from_the_first_divergent_assistant_turn():
    teachers = trajectories(ScriptedDesk(), n=3)
    half = episodes(ScriptedDesk(fraction=0.5), n=3)  # same lookup, then a half refund: parts at turn 1
    lost = episodes(ScriptedDesk(wrong_order=True), n=1)  # looks up the wrong order: parts at turn 0
    assert not any(e.success for e in half + lost) and all(t.episode.success for t in teachers)
    pairs, counts = build_dpo_pairs(teachers, half + lost, [HINT], cfg())
    assert counts["diverged"] == 4 and counts["train"] == 4
    by_task = {p.task_id: p for p in pairs if p.trajectory_id == f"t-{p.task_id}"}
    first = by_task[half[0].task_id]
    assert first.prompt == half[0].steps[1].prompt and [m.role for m in first.prompt][-2:] == ["assistant", "user"]
    chosen, rejected = (parse_tool_calls(t).calls[0].function for t in (first.completion, first.rejected))
    assert chosen.name == rejected.name == "refund"
    assert json.loads(chosen.arguments)["amount"] == 2 * json.loads(rejected.arguments)["amount"]
    wrong = next(p for p in pairs if p.task_id == lost[0].task_id and p.prompt == lost[0].steps[0].prompt)
    assert '"lookup_order"' in wrong.completion and "A-0000" in wrong.rejected
