"""Verifier callables written only against r2w's contract (an Episode in, bool or number out), as a
team's package would write them; the broken ones exercise the guard: one raises, one returns the wrong
type, one hangs, one is not a function."""

from __future__ import annotations

import time

from r2w.contracts import Episode


def says_yes(episode: Episode) -> bool:
    """Keeps an attempt whose final answer contains 'yes'."""
    return "yes" in episode.steps[-1].response.lower()


def answer_length(episode: Episode) -> float:
    """A score: the final answer's length in characters (kept at or above verify.keep_threshold)."""
    return float(len(episode.steps[-1].response))


def even_sample(episode: Episode) -> bool:
    """Keeps every other attempt of a task (the teach-stage test knows exactly which)."""
    episode.success = True  # a careless verifier writing to its argument: it must not reach the stored episode
    return episode.sample_index % 2 == 0


def raising(episode: Episode) -> bool:
    raise KeyError("balance")


def wrong_type(episode: Episode) -> str:
    return "yes"


def hanging(episode: Episode) -> bool:
    time.sleep(30)
    return True


NOT_A_FUNCTION = 3
