"""Tools rendered by the model's own chat template (issue 22, point 4), on the tiny random model.

A copy of the tiny tokenizer gets Qwen2.5-Instruct's tool template (tests/data/chat_templates/qwen2_5.jinja, a
Hermes-style template, byte for byte as TRL ships it). The default tiny tokenizer (plain ChatML, like SmolLM2's)
has no tool support and must keep r2w's text fallback, byte for byte as before.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from evaluation.environments.examples.helpdesk import TOOLS, HelpDesk
from r2w.agent_prompt import HINTS_OPEN, build_chat_messages, render_hints_block, strip_hints_block
from r2w.backends.base import SamplingParams, render_prompt
from r2w.backends.hf import TransformersBackend
from r2w.config import DistillConfig, LoraConfig
from r2w.contracts import Hint, Message, ToolCall, ToolFunction, Trajectory
from r2w.distill_data import in_text_fallback, to_dpo_dataset, to_sft_dataset
from r2w.rollout import Decision, LLMPolicy, run_chat_episodes
from r2w.tool_calls import (
    TEMPLATE_HERMES,
    TEXT_FALLBACK,
    parse_reply,
    render_turn,
    renders_tools,
    template_messages,
    tool_format,
)
from r2w.trainers import _dpo_trainer, _sft_trainer, in_student_format, train_dpo, train_sft
from r2w.training import load_model, load_tokenizer, trainer_settings
from tasks.distill import build_dpo_pairs, build_examples

torch.set_num_threads(1)

QWEN = (Path(__file__).parent / "data" / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")
HINT = Hint(
    hint_id=Hint.make_id("Refund exactly the amount the lookup returned.", "refund"),
    text="Refund exactly the amount the lookup returned.",
    applicability="When a customer asks for a refund",
    category="refund",
)
# r2w's text-fallback prompt for CONVERSATION below with HINT, rendered by the tiny model's ChatML template, as r2w
# wrote it before native tools existed (written by main at b96a2fc): it must never change.
FALLBACK_GOLDEN = Path(__file__).parent / "data" / "chat_templates" / "fallback_prompt_b96a2fc.txt"


def qwen_tokenizer(tiny_model: Path):
    tokenizer = copy.deepcopy(load_tokenizer(tiny_model))
    tokenizer.chat_template = QWEN
    return tokenizer


def _call(name: str, args: dict, turn: int) -> ToolCall:
    return ToolCall(id=f"call_{turn}_0", function=ToolFunction(name=name, arguments=json.dumps(args)))


CONVERSATION = [
    Message(role="user", content="Please refund order A-1."),
    Message(role="assistant", tool_calls=[_call("lookup_order", {"order_id": "A-1"}, 0)]),
    Message(role="tool", tool_call_id="call_0_0", name="lookup_order", content='{"amount": 12}'),
]


class ScriptedDesk:
    """A scripted agent (a named fake, no model) that writes its prompts in the given tool format, as LLMPolicy
    does: looks the order up, refunds it, answers."""

    name = model_id = "scripted-desk"

    def __init__(self, tool_format: str, fraction: float = 1.0) -> None:
        self.tool_format, self.fraction = tool_format, fraction  # fraction < 1: refunds too little (fails)

    def act_chat(self, states):
        out = []
        for s in states:
            order = next(m.content for m in s.conversation if m.role == "user").split("order ")[1].split(" ")[0]
            if not s.steps:
                turn = Message(role="assistant", tool_calls=[_call("lookup_order", {"order_id": order}, 0)])
            elif len(s.steps) == 1:
                amount = json.loads(s.conversation[-1].content)["amount"] * self.fraction
                args = {"order_id": order, "amount": amount}
                turn = Message(role="assistant", content="Refunding.", tool_calls=[_call("refund", args, 1)])
            else:
                turn = Message(role="assistant", content="Refunded.")
            native = self.tool_format != TEXT_FALLBACK
            prompt = build_chat_messages(s.conversation, s.tools, s.hints_block, native)
            out.append(Decision(action=render_turn(turn), response=render_turn(turn), prompt=prompt, turn=turn))
        return out


def played(tool_format: str, n: int = 3, fraction: float = 1.0, hints: bool = True):
    factory, block = HelpDesk(), render_hints_block([HINT])
    hints_for = (lambda *_: ([HINT.hint_id], block)) if hints else None
    jobs = [(t, 0) for t in factory.tasks("train", n)]
    return run_chat_episodes(factory, jobs, ScriptedDesk(tool_format, fraction), 5, hints_for=hints_for)


def trajectories(tool_format: str, n: int = 3) -> list[Trajectory]:
    block = render_hints_block([HINT])
    episodes = played(tool_format, n)
    assert all(e.success and e.tool_format == tool_format for e in episodes)
    return [Trajectory(trajectory_id=f"t-{e.task_id}", episode=e, hint_ids=[HINT.hint_id], hints_block=block)
            for e in episodes]  # fmt: skip


def cfg(**kw) -> DistillConfig:
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    base = {"validation_fraction": 0.0, "batch_size": 2, "bf16": False, "lora": lora, "max_length": 4096}
    return DistillConfig(**{**base, **kw})


def test_detection_says_yes_for_a_tool_template_and_no_for_plain_chatml(tiny_model):
    plain, qwen = load_tokenizer(tiny_model), qwen_tokenizer(tiny_model)
    assert not renders_tools(plain) and tool_format(plain) == TEXT_FALLBACK
    assert renders_tools(qwen) and tool_format(qwen) == TEMPLATE_HERMES
    other = copy.deepcopy(plain)  # renders tools, but not as <tool_call> blocks: not parsed, so the fallback
    other.chat_template = "{% for t in tools %}{{ t.function.name }}{% endfor %}" + plain.chat_template
    assert renders_tools(other) and tool_format(other) == TEXT_FALLBACK


def test_native_prompt_shows_the_templates_tools_and_structured_turns(tiny_model):
    qwen, block = qwen_tokenizer(tiny_model), render_hints_block([HINT])
    prompt = build_chat_messages(CONVERSATION, TOOLS, block, native=True)
    assert [m.role for m in prompt] == ["system", "user", "assistant", "tool"] and prompt[2].tool_calls
    assert "<tools>" not in prompt[0].content and prompt[0].content.endswith(block)  # tools: the template's job
    text = render_prompt(qwen, prompt, TOOLS)
    assert "# Tools" in text and all(f"\n{json.dumps(t, ensure_ascii=False)}" in text for t in TOOLS)
    assert '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1"}}\n</tool_call>' in text
    assert '<|im_start|>user\n<tool_response>\n{"amount": 12}\n</tool_response><|im_end|>' in text
    assert "<tool_response name=" not in text and "You may call these tools" not in text  # no fallback text
    assert text.index(HINTS_OPEN) < text.index("# Tools")  # the hints block stays in r2w's system message
    stripped = strip_hints_block(prompt)
    assert stripped[2].tool_calls == prompt[2].tool_calls and stripped[3].tool_call_id == "call_0_0"
    assert HINTS_OPEN not in render_prompt(qwen, stripped, TOOLS)


def test_the_backend_renders_with_the_template_and_episodes_record_the_path(tiny_model):
    """A real rollout on the transformers backend: the policy detects the template, the backend renders the
    tools with it (token counts prove which text was sent), and each episode records the path it used."""
    backend = TransformersBackend(tiny_model, dtype="float32")
    backend.tokenizer.chat_template = QWEN
    policy = LLMPolicy(backend, "base", SamplingParams(temperature=0.0, max_tokens=120), answer_max_tokens=120)
    factory = HelpDesk()
    (episode,) = run_chat_episodes(factory, [(factory.tasks("test", 1)[0], 0)], policy, max_steps=2)
    assert policy.tool_format == episode.tool_format == TEMPLATE_HERMES
    assert json.loads(episode.model_dump_json())["tool_format"] == TEMPLATE_HERMES
    step = episode.steps[0]
    assert "You may call these tools" not in step.prompt[0].content  # r2w's fallback block is not written
    native = backend.tokenizer(render_prompt(backend.tokenizer, step.prompt, TOOLS), add_special_tokens=False)
    without = backend.tokenizer(render_prompt(backend.tokenizer, step.prompt), add_special_tokens=False)
    assert step.prompt_tokens == len(native["input_ids"]) != len(without["input_ids"])
    if len(episode.steps) > 1 and episode.steps[0].tool_calls:  # a later prompt holds the turn as a structure
        assert episode.steps[1].prompt[2].tool_calls == episode.steps[0].tool_calls


def test_a_reply_in_the_templates_format_parses(tiny_model):
    qwen = qwen_tokenizer(tiny_model)
    call = _call("refund", {"order_id": "A-1", "amount": 12}, 3)
    turn = Message(role="assistant", content="Checking.", tool_calls=[call])
    messages = [Message(role="user", content="hi"), turn]
    text = render_prompt(qwen, messages[:1], TOOLS)  # the prompt, then the turn as the template writes it
    whole = qwen.apply_chat_template(
        [m.model_dump() for m in messages[:1]] + [template_messages([turn])[0]], tools=TOOLS, tokenize=False
    )
    reply = whole[len(text) :].removesuffix("<|im_end|>\n")
    assert reply.startswith("Checking.\n<tool_call>\n{")
    parsed = parse_reply(reply, 3)
    assert parsed.error == "" and parsed.content == "Checking." and parsed.calls == turn.tool_calls
    two = parse_reply(reply + "\n" + reply.split("\n", 1)[1].replace("refund", "lookup_order"), 3)
    assert [c.function.name for c in two.calls] == ["refund", "lookup_order"]


def qwen_model(tiny_model: Path, folder: Path) -> Path:
    """The tiny model's weights with the tool template on its tokenizer, saved as a model folder."""
    shutil.copytree(tiny_model, folder)
    qwen_tokenizer(tiny_model).save_pretrained(folder)
    return folder


def generation_text(message: dict) -> str:
    """An assistant turn as Qwen2.5's template writes it after `<|im_start|>assistant` (its generation block)."""
    if not message.get("tool_calls"):
        return f"\n{message['content']}<|im_end|>\n"
    text = f"\n{message['content']}" if message["content"] else ""
    for call in message["tool_calls"]:
        arguments = json.dumps(call["function"]["arguments"], ensure_ascii=False)
        text += f'\n<tool_call>\n{{"name": "{call["function"]["name"]}", "arguments": {arguments}}}\n</tool_call>'
    return text + "<|im_end|>\n"


def test_a_native_tool_conversation_trains_on_exactly_the_assistant_turns(tiny_model, tmp_path):
    examples, _ = build_examples(trajectories(TEMPLATE_HERMES), [HINT], cfg())
    assert len(examples) == 3 and all(e.loss_on == "assistant_turns" and e.tools == TOOLS for e in examples)
    roles = [m.role for m in examples[0].prompt]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]  # structured, not flattened
    model = qwen_model(tiny_model, tmp_path / "qwen-tiny")
    tokenizer = load_tokenizer(model)
    assert tool_format(tokenizer) == TEMPLATE_HERMES and in_student_format(examples, tokenizer) == examples
    dataset = to_sft_dataset(examples)
    assert json.loads(dataset["tools"][0]) == TOOLS
    settings = trainer_settings(cfg(max_steps=1), tmp_path / "ckpt", seed=0)
    trainer = _sft_trainer(cfg(), settings, load_model(model, torch.float32), tokenizer, examples, [])
    assert trainer.args.assistant_only_loss
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained, whole = tokenizer.decode(ids[labels != -100]), tokenizer.decode(ids)
    messages = dataset["messages"][0]
    assert whole == tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)  # as the model sees it
    assert "# Tools" in whole and isinstance(messages[2]["tool_calls"][0]["function"]["arguments"], dict)
    turns = [m for m in messages if m["role"] == "assistant"]
    assert len(turns) == 3 and trained == "".join(generation_text(m) for m in turns)  # every turn, calls included
    for other in (m["content"] for m in messages if m["role"] in ("system", "user", "tool")):
        assert other not in trained  # no system prompt, user turn or tool result
    art = train_sft(examples, model, cfg(max_steps=1), tmp_path / "student", seed=0)
    assert art.steps == 1 and art.roundtrip_max_abs_diff < 2e-3


def test_a_native_teacher_teaches_a_student_without_tool_support_in_the_fallback(tiny_model):
    """Rewritten into the text fallback, a native conversation is exactly the one the fallback agent plays."""
    native, _ = build_examples(trajectories(TEMPLATE_HERMES), [HINT], cfg())
    text, _ = build_examples(trajectories(TEXT_FALLBACK), [HINT], cfg())
    assert not any(e.tools for e in text) and native[0].prompt != text[0].prompt
    converted = in_student_format(native, load_tokenizer(tiny_model))
    assert [(e.prompt, e.completion, e.tools) for e in converted] == [(e.prompt, e.completion, []) for e in text]
    assert in_text_fallback(text[0]) is text[0]
    with pytest.raises(ValueError, match="played with r2w's text tool fallback"):
        in_student_format(text, qwen_tokenizer(tiny_model))


def test_the_fallback_prompt_is_byte_identical_to_before(tiny_backend):
    """The default tokenizer (no tool support) keeps r2w's text fallback: the same messages and the same text."""
    block = render_hints_block([HINT])
    prompt = build_chat_messages(CONVERSATION, TOOLS, block)
    assert tool_format(tiny_backend.tokenizer) == TEXT_FALLBACK
    assert tiny_backend.render(prompt) == FALLBACK_GOLDEN.read_text(encoding="utf-8")
    assert build_chat_messages(CONVERSATION, TOOLS, block, native=False) == prompt


def test_dpo_pairs_of_native_conversations_train_with_the_templates_tools(tiny_model, tmp_path):
    """Teacher and base part at the refund turn: the pair keeps structured calls, TRL's DPOTrainer renders prompt,
    chosen and rejected with the tools (its own `tools` column), and one real DPO step runs. A student without
    tool support gets the same pairs in the text fallback."""
    half = played(TEMPLATE_HERMES, fraction=0.5, hints=False)  # the base agent refunds half: fails
    assert not any(e.success for e in half) and {e.tool_format for e in half} == {TEMPLATE_HERMES}
    pairs, counts = build_dpo_pairs(trajectories(TEMPLATE_HERMES), half, [HINT], cfg())
    assert counts["diverged"] == 3 and len(pairs) == 3 and all(p.tools == TOOLS for p in pairs)
    assert [m.role for m in pairs[0].prompt] == ["system", "user", "assistant", "tool"]
    dataset = to_dpo_dataset(pairs)
    assert json.loads(dataset["tools"][0]) == TOOLS
    chosen, rejected = (dataset[c][0][0]["tool_calls"][0]["function"]["arguments"] for c in ("chosen", "rejected"))
    assert isinstance(chosen, dict) and chosen["amount"] == 2 * rejected["amount"]
    model = qwen_model(tiny_model, tmp_path / "qwen-tiny")
    tokenizer = load_tokenizer(model)
    settings = trainer_settings(cfg(method="dpo", max_steps=1), tmp_path / "ckpt", seed=0)
    trainer = _dpo_trainer(cfg(method="dpo"), settings, load_model(model, torch.float32), tokenizer, pairs, [])
    row, pair = trainer.train_dataset[0], next(p for p in pairs if p.example_id == pairs[0].example_id)
    prompt = tokenizer.apply_chat_template(
        dataset["prompt"][0], tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(row["prompt_ids"]) == prompt and "# Tools" in prompt
    for ids, text in ((row["chosen_ids"], pair.completion), (row["rejected_ids"], pair.rejected)):
        amount = json.loads(parse_reply(text).calls[0].function.arguments)["amount"]
        assert f'"amount": {amount}' in tokenizer.decode(ids) and "<tool_call>" in tokenizer.decode(ids)
    art = train_dpo(pairs, model, cfg(max_steps=1), tmp_path / "student", seed=0)
    assert art.steps == 1
    fallback = in_student_format(pairs, load_tokenizer(tiny_model))
    assert all(not p.tools and "You may call these tools" in p.prompt[0].content for p in fallback)
    assert "tools" not in to_dpo_dataset(fallback).column_names
