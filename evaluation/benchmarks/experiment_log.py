"""Experiment log: one row per pipeline run of a config, read back from MLflow, with the command that
reproduces it.

Each `r2w run` logs its whole config as params, its held-out scores and retention figures as metrics,
and its gate report under `<data_dir>/runs/<run id>/`. This script lines up the finished runs of one
MLflow experiment: what the recipe changed against the config file (as `--set` overrides, so the
command column reruns the row), student success with n and a 95% interval beside random and the base,
the retention drops and KL the forgetting gates read, training speed, and the gate's verdict.

Command (repo root, venv active; seconds):

    python -m evaluation.benchmarks.experiment_log --config tidy6 [--out .r2w/exp/tidy6_log.json]
"""

from __future__ import annotations

import ast
import json
import statistics
from typing import Any

from evaluation.benchmarks import common
from evaluation.metrics import wilson_interval
from r2w.config import R2WConfig, load_config
from r2w.registry import Lineage, Tag
from r2w.tracking import client_for, flatten

# Params that name where a run lives, not what it learned: never part of the recipe.
NOT_RECIPE = {"name", "data_dir", "registry.tracking_uri"}
# Overrides that make a run a replicate of its recipe, not another recipe: grouped into one arm.
REPLICATE_KEYS = {"registry.model_name", "distill.seed", "runtime.seed"}


def _value(text: str) -> Any:
    """An MLflow param (always a string) back to its Python value."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def recipe_overrides(params: dict[str, str], cfg: R2WConfig) -> dict[str, Any]:
    """The run's params that differ from the config file: the `--set` items that reproduce it."""
    defaults = flatten(cfg.model_dump(mode="json"))
    out = {}
    for key, text in sorted(params.items()):
        if key in NOT_RECIPE or key not in defaults:
            continue
        value = _value(text)
        if value != defaults[key] and str(value) != str(defaults[key]):
            out[key] = value
    return out


def command(config: str, overrides: dict[str, Any]) -> str:
    sets = " ".join(f"--set '{k}={json.dumps(v) if not isinstance(v, str) else v}'" for k, v in overrides.items())
    return f"r2w run --config {config} {sets}".strip()


def _score(report: dict | None, metrics: dict, policy: str, n_default: int) -> dict | None:
    """A policy's held-out score: from the gate report when it is on disk (n, tokens), else the run's metrics."""
    if report:
        for s in report.get("scores", []):
            if s["policy"] == policy:
                return {k: s[k] for k in ("successes", "n", "rate", "ci_low", "ci_high", "mean_tokens")}
    rate = metrics.get(f"eval.{policy}.success")
    if rate is None:
        return None
    n = int(metrics.get(f"eval.{policy}.n", n_default))
    k = round(rate * n)
    low, high = wilson_interval(k, n)
    tokens = metrics.get(f"eval.{policy}.mean_tokens")
    return {"successes": k, "n": n, "rate": rate, "ci_low": low, "ci_high": high, "mean_tokens": tokens}


def run_row(run, cfg: R2WConfig, config: str) -> dict | None:
    """One finished, evaluated run as a row; None for runs that stopped before the evaluation."""
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    if "eval.student.success" not in metrics:
        return None
    report_path = cfg.data_path / "runs" / run.info.run_id / "gate_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    test_n = int(params.get("evaluate.test_episodes", cfg.evaluate.test_episodes))
    random_n = int(params.get("evaluate.random_episodes", cfg.evaluate.random_episodes))
    overrides = recipe_overrides(params, cfg)
    return {
        "run": run.info.run_id,
        "started": run.info.start_time,
        "recipe": overrides,
        "command": command(config, overrides),
        "scores": {
            p: _score(report, metrics, p, random_n if p == "random" else test_n)
            for p in ("random", "base", "base-sampled", "base_hints", "student")
        },
        "retention_drops": {k.removeprefix("retention.drop."): v for k, v in metrics.items() if ".drop." in k},
        "kl": metrics.get("retention.kl_base_student"),
        "train_s_per_step": metrics.get("train.s_per_step"),
        "train_final_loss": metrics.get("train.final_loss"),
        "teacher_data": Lineage.from_tags(tags).trajectories_dataset[:8],
        "gate": tags.get(Tag.GATE, "-"),
        "gate_reasons": tags.get(Tag.GATE_REASONS, ""),
        "registered_version": tags.get(Tag.REGISTERED_VERSION),
    }


def experiment_rows(config: str, overrides: dict | None = None) -> list[dict]:
    """Every evaluated run in the config's MLflow experiment, oldest first."""
    cfg = load_config(config, overrides or {})
    client = client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.registry.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {cfg.registry.experiment!r} at {cfg.tracking_uri}: nothing run yet")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    return [row for run in runs if (row := run_row(run, cfg, config))]


def _pct(score: dict | None) -> str:
    return common.success(score) if score else "-"


def markdown(rows: list[dict]) -> str:
    drops = sorted({k for r in rows for k in r["retention_drops"]})
    head = ["run", "recipe (vs config)", "student", "random", "base", "student - random", *[f"drop {d}" for d in drops]]
    head += ["KL", "student tokens/ep", "s/step", "gate", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s, rnd = r["scores"]["student"], r["scores"]["random"]
        gain = f"{s['rate'] - rnd['rate']:+.1%}" if s and rnd else "-"
        recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items()) or "(as configured)"
        cells = [r["run"][:8], recipe, _pct(s), _pct(rnd), _pct(r["scores"]["base"]), gain]
        cells += [f"{r['retention_drops'][d]:+.3f}" if d in r["retention_drops"] else "-" for d in drops]
        cells += [
            f"{r['kl']:.3f}" if r["kl"] is not None else "-",
            f"{s['mean_tokens']:.0f}" if s and s["mean_tokens"] is not None else "-",
            f"{r['train_s_per_step']:.1f}" if r["train_s_per_step"] else "-",
            r["gate"] + (f" (v{r['registered_version']})" if r["registered_version"] else ""),
            f"`{r['command']}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recipe_arms(rows: list[dict]) -> list[dict]:
    """Runs grouped by recipe, replicates (seeds, registry names) together: the spread between runs of
    one recipe is the yardstick any difference between recipes has to beat."""
    arms: dict[str, dict] = {}
    for r in rows:
        student = r["scores"]["student"]
        if not student:
            continue
        recipe = {k: v for k, v in r["recipe"].items() if k not in REPLICATE_KEYS}
        key = json.dumps(recipe, sort_keys=True)
        arm = arms.setdefault(key, {"recipe": recipe, "runs": [], "rates": [], "teacher_data": []})
        arm["runs"].append(r["run"])
        arm["rates"].append(student["rate"])
        arm["teacher_data"].append(r["teacher_data"])
    for arm in arms.values():
        rates = arm["rates"]
        arm["mean"] = sum(rates) / len(rates)
        arm["sd"] = statistics.stdev(rates) if len(rates) > 1 else None
        arm["teacher_datasets"] = len(set(arm["teacher_data"]))
    return list(arms.values())


def arms_markdown(arms: list[dict]) -> str:
    head = ["recipe (replicates together)", "runs", "teacher datasets", "student per run", "mean", "SD between runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        recipe = ", ".join(f"{k}={v}" for k, v in a["recipe"].items()) or "(as configured)"
        per_run = ", ".join(f"{rate:.1%}" for rate in a["rates"])
        sd = f"{a['sd']:.1%}" if a["sd"] is not None else "-"
        lines.append(f"| {recipe} | {len(a['runs'])} | {a['teacher_datasets']} | {per_run} | {a['mean']:.1%} | {sd} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, out="also write the rows as JSON (atomically)")
    ap.add_argument("--config", default="demo", help="bundled config name or YAML path (its experiment is read)")
    args = ap.parse_args(argv)
    common.setup(load_config(args.config).data_dir)  # before MLflow is imported (no torch here)
    rows = experiment_rows(args.config)
    print(markdown(rows))
    print("\n" + arms_markdown(recipe_arms(rows)))
    failed = [r for r in rows if r["gate_reasons"]]
    for r in failed:
        print(f"\n{r['run'][:8]} gate: {r['gate_reasons']}")
    common.write_out(args.out, rows)


if __name__ == "__main__":
    main()
