"""TextWorldExpress adapter: all 8 game types (cookingworld, twc, coin, mapreader, arithmetic, sorting,
simonsays, peckingorder), game parameters from config (`env.game`, `env.params`).

Each live environment is its own JVM (py4j), started in ~0.35 s of CPU. A run starts the same kind of
environment for every stage and policy (64 at a time in lockstep rollouts: ~22 s each time), so a closed
environment goes back to an idle pool of its process and the next `make()` of the same game, params and
step limit takes it (`reset` loads each task afresh). The pool holds at most `IDLE_CAP` (~65 MB each) and is
shut down at exit. Seeds come from TWX's own train/dev/test folds.
"""

from __future__ import annotations

import atexit
import os
from functools import cached_property

from r2w.environment import Observation, TaskSpec

SPLIT_TO_FOLD = {"train": "train", "dev": "dev", "test": "test"}

# Small instances a 135M model can finish within ~15 steps (gold paths 2-11 steps on test seeds).
# Used when `env.params` is null; '' means TWX's own (larger) defaults. Keys differ per game:
# TWX rejects a key the game does not know, so one params string cannot serve every game.
GAME_PARAMS: dict[str, str] = {
    "cookingworld": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
    "twc": "numLocations=1,numItemsToPutAway=1,includeDoors=0,limitInventorySize=0",
    "coin": "numLocations=3,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
    "mapreader": "numLocations=4,maxDistanceApart=2,maxDistractorItemsPerLocation=0,includeDoors=0,"
    "limitInventorySize=0",
    "arithmetic": "",
    "sorting": "",
    "simonsays": "",
    "peckingorder": "",
}
GAMES = tuple(GAME_PARAMS)


def resolve_params(game: str, params: str | None) -> str:
    if game not in GAME_PARAMS:
        raise ValueError(f"env.game: unknown TextWorldExpress game {game!r} (expected one of {list(GAMES)})")
    return GAME_PARAMS[game] if params is None else params


class TWXEnvironment:
    def __init__(self, game: str, params: str | None, max_steps: int) -> None:
        from textworld_express import TextWorldExpressEnv

        self.game, self.params = game, resolve_params(game, params)
        # TWX's own step limit is set above ours: the rollout decides when an episode ends.
        self._env = TextWorldExpressEnv(envStepLimit=max_steps + 5)
        try:
            self._env.load(game, self.params)
        except ValueError as exc:
            self.shutdown()
            raise ValueError(f"env.params {self.params!r} for twx game {game!r}: {str(exc).strip()}") from None

    def reset(self, task: TaskSpec) -> tuple[str, Observation]:
        obs, info = self._env.reset(seed=task.seed, gameFold=SPLIT_TO_FOLD[task.split], generateGoldPath=True)
        return info["taskDescription"], _to_observation(obs, info)

    def step(self, action: str) -> Observation:
        obs, reward, done, info = self._env.step(action)
        return _to_observation(obs, info, reward=reward, done=done)

    def gold_actions(self) -> list[str]:
        return list(self._env.getGoldActionSequence())

    @property
    def kind(self) -> tuple[str, str, int, int]:
        """What makes two environments interchangeable (and the process that owns the JVM)."""
        return self.game, self.params, self._env.envStepLimit, os.getpid()

    def close(self) -> None:
        """Back to the idle pool (the JVM keeps running for the next `make()`), or shut down when it is full."""
        idle = _IDLE.setdefault(self.kind, [])
        if len(idle) < IDLE_CAP and self not in idle:
            idle.append(self)
        else:
            self.shutdown()

    def shutdown(self) -> None:
        try:
            self._env.close()
        except Exception:  # noqa: BLE001 - the JVM may already be gone
            pass
        self._env.close = lambda: None  # TWX's __del__ closes again; make that a no-op


IDLE_CAP = 64  # started environments kept per kind (the largest lockstep batch of the configs)
_IDLE: dict[tuple[str, str, int, int], list[TWXEnvironment]] = {}


def take_idle(game: str, params: str, max_steps: int) -> TWXEnvironment | None:
    """An idle started environment of this kind, if the pool holds one."""
    idle = _IDLE.get((game, params, max_steps + 5, os.getpid()))
    return idle.pop() if idle else None


@atexit.register
def shutdown_idle() -> None:
    """Stop every pooled JVM this process started."""
    for kind, idle in list(_IDLE.items()):
        if kind[-1] == os.getpid():
            while idle:
                idle.pop().shutdown()


def _to_observation(obs: str, info: dict, reward: float = 0.0, done: bool = False) -> Observation:
    success = bool(info.get("tasksuccess"))
    return Observation(
        text=obs.strip(),
        valid_actions=sorted(info.get("validActions", [])),
        done=done or success or bool(info.get("taskfailure")),
        success=success,
        score=float(info.get("score", 0.0)),
        reward=float(reward),
    )


class TWXFactory:
    name = "twx"

    def __init__(self, game: str, params: str | None, max_steps: int) -> None:
        self.game, self.params, self.max_steps = game, resolve_params(game, params), max_steps
        self.category = game

    @cached_property
    def _seeds(self) -> dict[str, list[int]]:
        env = TWXEnvironment(self.game, self.params, self.max_steps)
        try:
            raw = env._env
            return {
                "train": list(raw.getValidSeedsTrain()),
                "dev": list(raw.getValidSeedsDev()),
                "test": list(raw.getValidSeedsTest()),
            }
        finally:
            env.close()

    def tasks(self, split: str, n: int, offset: int = 0) -> list[TaskSpec]:
        if split not in SPLIT_TO_FOLD:
            raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_TO_FOLD)}")
        seeds = self._seeds[split][offset : offset + n]
        if len(seeds) < n:
            raise ValueError(f"twx/{self.game}: only {len(seeds)} {split} seeds from offset {offset}, asked {n}")
        return [TaskSpec(env=self.name, category=self.category, split=split, seed=s) for s in seeds]

    def make(self) -> TWXEnvironment:
        return take_idle(self.game, self.params, self.max_steps) or TWXEnvironment(
            self.game, self.params, self.max_steps
        )
