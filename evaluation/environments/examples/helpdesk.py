"""An example tool-calling environment a team can copy: a help desk that refunds orders.

It uses only the public seam (`r2w.environment`, `r2w.contracts`), as a team's own package would.
Point a config at it:

    env: {name: evaluation.environments.examples.helpdesk:HelpDesk, options: {max_orders: 3}}

Each task is a customer asking for a refund of one order, by order id only. The agent must look the
order up (`lookup_order`) to learn its amount, then call `refund` with that exact amount, then answer
without a tool call. State (orders, refunds) lives in the environment, so tools change it; the
verifier checks the final state: exactly one refund, of the right order, for the full amount.
Splits are seed ranges that never overlap: train 0-9999, dev 10000-19999, test 20000-29999.

`restore` (optional seam) turns an imported trace of this desk back into its task: a trace that
records the task id `helpdesk/refund/<split>/<seed>` (e.g. `metadata.task_id` in OpenAI chat JSONL)
is re-attempted by the teacher exactly, with the same order book.
"""

from __future__ import annotations

import json
import random

from r2w.contracts import Episode, Message
from r2w.environment import ChatStart, TaskSpec, TurnResult

SPLITS = {"train": 0, "dev": 10_000, "test": 20_000}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its id: returns its item, amount and status.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "e.g. A-1042"}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund",
            "description": "Refund an order. The amount must equal the order's amount.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                "required": ["order_id", "amount"],
            },
        },
    },
]


class HelpDesk:
    """The factory: lists tasks per split and makes live environments."""

    kind = "chat"

    def __init__(self, max_orders: int = 3) -> None:
        self.name, self.category, self.max_orders = "helpdesk", "refund", max_orders

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
        base = SPLITS[split] + offset
        return [TaskSpec(self.name, self.category, split, base + i) for i in range(n)]

    def make(self) -> HelpDeskEpisode:
        return HelpDeskEpisode(self.max_orders)

    def restore(self, episode: Episode) -> TaskSpec | None:
        """The task an imported episode recorded (`helpdesk/refund/<split>/<seed>`), or None if not ours."""
        parts = episode.task_id.split("/")
        if len(parts) != 4 or parts[:2] != [self.name, self.category] or not parts[3].isdigit():
            return None
        split, seed = parts[2], int(parts[3])
        if split not in SPLITS or not SPLITS[split] <= seed < SPLITS[split] + 10_000:
            return None
        return TaskSpec(self.name, self.category, split, seed)


class HelpDeskEpisode:
    """One customer conversation; the order book is this episode's state."""

    def __init__(self, max_orders: int) -> None:
        self.max_orders = max_orders
        self.orders: dict[str, dict] = {}
        self.refunds: list[tuple[str, float]] = []
        self.target = ""

    def reset(self, task: TaskSpec) -> ChatStart:
        rng = random.Random(task.seed)
        items = ["kettle", "lamp", "headphones", "backpack", "mug", "chair"]
        self.orders = {
            f"A-{rng.randint(1000, 9999)}": {"item": rng.choice(items), "amount": rng.randint(5, 200), "status": "paid"}
            for _ in range(rng.randint(1, self.max_orders))
        }
        self.refunds, self.target = [], rng.choice(sorted(self.orders))
        item = self.orders[self.target]["item"]
        ask = f"Hi, my {item} arrived broken. Please refund order {self.target} in full."
        return ChatStart(messages=[Message(role="user", content=ask)], tools=TOOLS)

    def step(self, turn: Message) -> TurnResult:
        if not turn.tool_calls:  # the agent answered: the conversation ends and the verifier decides
            return TurnResult(done=True, success=self.solved(), score=float(self.solved()))
        replies = [
            Message(role="tool", tool_call_id=c.id, name=c.function.name, content=self.call(c)) for c in turn.tool_calls
        ]
        return TurnResult(messages=replies)

    def call(self, call) -> str:
        try:
            args = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            return json.dumps({"error": "arguments are not valid JSON"})
        order = self.orders.get(str(args.get("order_id", "")))
        if call.function.name == "lookup_order":
            return json.dumps(order or {"error": "no such order"})
        if call.function.name == "refund":
            if order is None:
                return json.dumps({"error": "no such order"})
            self.refunds.append((str(args["order_id"]), float(args.get("amount", 0))))
            order["status"] = "refunded"
            return json.dumps({"ok": True})
        return json.dumps({"error": f"unknown tool {call.function.name!r}"})

    def solved(self) -> bool:
        return self.refunds == [(self.target, float(self.orders[self.target]["amount"]))]

    def close(self) -> None:
        self.orders = {}
