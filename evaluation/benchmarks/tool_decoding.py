"""Schema-constrained against free decoding of tool calls, on the same held-out tasks, paired per task.

The base model plays each task greedily twice with the same prompt (tools in the system prompt):
once free (the reply must contain `<tool_call>{...}</tool_call>` blocks, parsed afterwards) and once
decoded to the tools' JSON schema (vLLM structured outputs; `agent.constrain_tool_calls`). Reported:
success with n and a 95% interval, how many replies held a call, how many calls were malformed, and
the paired difference with McNemar's p.

    python -m evaluation.benchmarks.tool_decoding --config bfcl --n 194 --out evaluation/results/bfcl_decoding.json
"""

from __future__ import annotations

from evaluation.benchmarks import common
from evaluation.environments import make_environment
from evaluation.metrics import compare_paired, score_episodes
from r2w.rollout import agent_policy


def main(argv: list[str] | None = None) -> dict:
    args = common.parser(__doc__, config="bfcl", n=194, out=common.JSON_OUT).parse_args(argv)
    cfg = common.load(args.config, args.set)
    factory = make_environment(cfg.env)
    tasks = factory.tasks("test", args.n)
    model = common.backend(cfg, cfg.models.base)
    episodes, scores = {}, {}
    for arm, constrained in (("free", False), ("schema-constrained", True)):
        arm_cfg = common.variant(cfg, "agent", constrain_tool_calls=constrained)
        episodes[arm] = common.play(arm_cfg, factory, tasks, agent_policy(arm_cfg, model, "base", 0.0), arm)
        score = score_episodes(arm, episodes[arm]).model_dump()
        steps = [s for e in episodes[arm] for s in e.steps]
        score.update(
            with_calls=sum(bool(s.tool_calls) for s in steps), malformed=sum(bool(s.malformed_tool_call) for s in steps)
        )
        scores[arm] = score
    comparisons = [compare_paired("schema-constrained", episodes["schema-constrained"], "free", episodes["free"])]
    header = f"### Tool-call decoding, base greedy, {cfg.env.options.get('category', cfg.env.name)} (n={len(tasks)})"
    lines = common.tables(header, scores, comparisons)
    lines += ["", "| arm | replies with a call | malformed calls |", "|---|---:|---:|"]
    lines += [f"| {arm} | {s['with_calls']}/{s['n']} | {s['malformed']} |" for arm, s in scores.items()]
    return common.report({"scores": scores, "comparisons": comparisons}, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
