"""How big is each BFCL category (single-turn, multi_turn_base)? Tasks per split, tools and gold calls per task.

Reads bfcl-eval's own data (no model, no network). Also checks that the gold answer, as OpenAI
tool-call turns, passes BFCL's own checker on every task (AST checker; multi-turn: executed on
BFCL's backends and scored by multi_turn_checker). It should be 100%.

    python -m evaluation.benchmarks.bfcl_probe [--test-fraction 0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from evaluation.environments.bfcl import (
    MULTI_TURN_CATEGORIES,
    SINGLE_TURN_CATEGORIES,
    BFCLFactory,
    check,
    gold_turn,
    load_category,
)
from r2w.environment import TaskSpec


def _multi_turn_gold_pass(factory, entries) -> int:

    env, passed = factory.make(), 0
    try:
        for task in [TaskSpec("bfcl", factory.category, "?", e.index, e.id) for e in entries]:
            env.reset(task)
            result = None
            for turn in [m for turns in env.gold_turns() for m in turns]:
                result = env.step(turn)
            passed += bool(result and result.success)
    finally:
        env.close()
    return passed


def probe(category: str, test_fraction: float) -> dict:

    factory = BFCLFactory(category, test_fraction)
    entries = load_category(category)
    multi = category in MULTI_TURN_CATEGORIES
    return {
        "category": category,
        "tasks": len(entries),
        "train": len(factory.split_entries("train")),
        "test": len(factory.split_entries("test")),
        "tools_mean": statistics.mean(len(e.functions) for e in entries),
        "tools_max": max(len(e.functions) for e in entries),
        # single-turn: calls per task; multi-turn: calls per task over all its user turns
        "gold_calls_mean": statistics.mean(_n_calls(e.answer, multi) for e in entries),
        "gold_calls_max": max(_n_calls(e.answer, multi) for e in entries),
        "gold_pass": _multi_turn_gold_pass(factory, entries)
        if multi
        else sum(check(e, category, gold_turn(e))["valid"] for e in entries),
    }


def _n_calls(answer: list, multi: bool) -> int:
    return sum(len(turn) for turn in answer) if multi else len(answer)


def main(argv: list[str] | None = None) -> list[dict]:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-fraction", type=float, default=0.5)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = [probe(c, args.test_fraction) for c in SINGLE_TURN_CATEGORIES + MULTI_TURN_CATEGORIES]
    head = f"{'category':<18} {'tasks':>5} {'train':>5} {'test':>5} {'tools':>11} {'gold calls':>11} {'gold pass':>10}"
    print(f"bfcl-eval categories, test_fraction={args.test_fraction}")
    print(head)
    for r in rows:
        print(
            f"{r['category']:<18} {r['tasks']:>5} {r['train']:>5} {r['test']:>5} "
            f"{r['tools_mean']:>5.2f} (<={r['tools_max']}) {r['gold_calls_mean']:>5.2f} (<={r['gold_calls_max']}) "
            f"{r['gold_pass']:>4}/{r['tasks']}"
        )
    total = {k: sum(r[k] for r in rows) for k in ("tasks", "train", "test")}
    print(f"{'total':<18} {total['tasks']:>5} {total['train']:>5} {total['test']:>5}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
