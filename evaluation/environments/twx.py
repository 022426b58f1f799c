"""TextWorldExpress adapter (cookingworld, twc, coin, mapreader, arithmetic, sorting, ...).

Each live environment is its own JVM (py4j), started in ~0.5 s; a rollout keeps a small pool.
Seeds come from TWX's own train/dev/test folds.
"""

from __future__ import annotations

from functools import cached_property

from evaluation.environments.base import Observation, TaskSpec

SPLIT_TO_FOLD = {"train": "train", "dev": "dev", "test": "test"}


class TWXEnvironment:
    def __init__(self, game: str, params: str, max_steps: int) -> None:
        from textworld_express import TextWorldExpressEnv

        self.game, self.params = game, params
        # TWX's own step limit is set above ours: the rollout decides when an episode ends.
        self._env = TextWorldExpressEnv(envStepLimit=max_steps + 5)
        self._env.load(game, params)

    def reset(self, task: TaskSpec) -> tuple[str, Observation]:
        obs, info = self._env.reset(seed=task.seed, gameFold=SPLIT_TO_FOLD[task.split], generateGoldPath=True)
        return info["taskDescription"], _to_observation(obs, info)

    def step(self, action: str) -> Observation:
        obs, reward, done, info = self._env.step(action)
        return _to_observation(obs, info, reward=reward, done=done)

    def gold_actions(self) -> list[str]:
        return list(self._env.getGoldActionSequence())

    def close(self) -> None:
        try:
            self._env.close()
        except Exception:  # noqa: BLE001 - the JVM may already be gone
            pass
        self._env.close = lambda: None  # TWX's __del__ closes again; make that a no-op


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

    def __init__(self, game: str, params: str, max_steps: int) -> None:
        self.game, self.params, self.max_steps = game, params, max_steps
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
        return TWXEnvironment(self.game, self.params, self.max_steps)
