"""Test environments written only against r2w's public seam, as a team's package would be.

`CoinFlip` has a verifier a random tiny model can satisfy about half the time (its reply's content
hash), so the whole pipeline has failures to learn from and successes to keep. The broken ones
exercise the plugin guard: one raises, one returns the wrong type, one hangs.
"""

from __future__ import annotations

import hashlib
import time

from r2w.contracts import Message
from r2w.environment import ChatStart, TaskSpec, TurnResult

TOOLS = [{"type": "function", "function": {"name": "flip", "description": "Flip a coin.", "parameters": {}}}]


class CoinFlip:
    kind = "chat"

    def __init__(self, category: str = "coin") -> None:
        self.name, self.category = "coinflip", category

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        start = {"train": 0, "dev": 1000, "test": 2000}[split] + offset
        return [TaskSpec(self.name, self.category, split, start + i) for i in range(n)]

    def make(self):
        return CoinFlipEpisode()


class CoinFlipEpisode:
    def reset(self, task: TaskSpec) -> ChatStart:
        self.seed = task.seed
        return ChatStart(messages=[Message(role="user", content=f"Call it, round {task.seed}.")], tools=TOOLS)

    def step(self, turn: Message) -> TurnResult:
        text = turn.content + "".join(c.function.name + c.function.arguments for c in turn.tool_calls)
        won = hashlib.sha256(f"{self.seed}:{text}".encode()).digest()[0] % 2 == 0
        return TurnResult(done=True, success=won, score=float(won))

    def close(self) -> None:
        pass


class Raising(CoinFlip):
    def make(self):
        class Broken(CoinFlipEpisode):
            def step(self, turn):
                raise KeyError("balance")

        return Broken()


class WrongType(CoinFlip):
    def make(self):
        class Broken(CoinFlipEpisode):
            def step(self, turn):
                return {"done": True}

        return Broken()


class Hanging(CoinFlip):
    def make(self):
        class Broken(CoinFlipEpisode):
            def reset(self, task):
                time.sleep(30)

        return Broken()
