"""Experiment log: runs read back from a real MLflow store; each row's command reproduces its config."""

from __future__ import annotations

import json
import shlex

from evaluation.benchmarks.experiment_log import arms_markdown, experiment_rows, markdown, recipe_arms
from r2w.config import load_config, merge_overrides, parse_sets
from r2w.tracking import client_for, flatten, log_metrics, log_params, start_run


def _logged_run(cfg, metrics: dict[str, float], tags: dict[str, str] | None = None) -> str:
    client = client_for(cfg)
    run_id = start_run(client, cfg, "r2w-test", tags)
    log_params(client, run_id, cfg.model_dump(mode="json"))
    log_metrics(client, run_id, metrics)
    client.set_terminated(run_id)
    return run_id


def test_rows_name_the_recipe_and_their_command_rebuilds_its_config(tmp_path):
    base = {"data_dir": str(tmp_path)}
    cfg = load_config("test", base)
    variant = {"distill": {"lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]}, "learning_rate": 5e-4}}
    cfg_variant = load_config("test", merge_overrides(base, variant))
    scores = {"eval.student.success": 0.5, "eval.random.success": 0.25, "eval.base.success": 0.0}
    first = _logged_run(cfg, {**scores, "retention.drop.rg.leg_counting": 0.2}, {"r2w.gate": "failed"})
    second = _logged_run(cfg_variant, {**scores, "eval.student.success": 0.75, "retention.kl_base_student": 0.01})
    _logged_run(cfg, {"collect.failures": 3})  # stopped before the evaluation: no row
    # the gate report on disk wins over metrics: it knows n and tokens
    report = {
        "scores": [
            {
                "policy": "student",
                "successes": 3,
                "n": 4,
                "rate": 0.75,
                "ci_low": 0.3,
                "ci_high": 0.95,
                "mean_tokens": 12.0,
            }
        ]
    }
    (tmp_path / "runs" / second).mkdir(parents=True)
    (tmp_path / "runs" / second / "gate_report.json").write_text(json.dumps(report))

    rows = experiment_rows("test", base)
    assert [r["run"] for r in rows] == [first, second]
    assert rows[0]["recipe"] == {} and rows[0]["command"] == "r2w run --config test"
    assert rows[1]["recipe"] == {
        "distill.learning_rate": 5e-4,
        "distill.lora.r": 2,
        "distill.lora.target_modules": ["q_proj", "v_proj"],
    }
    # the command's --set items rebuild exactly the variant's config
    sets = [a for a in shlex.split(rows[1]["command"]) if "=" in a]
    rebuilt = load_config("test", merge_overrides(base, parse_sets(sets)))
    assert flatten(rebuilt.model_dump(mode="json")) == flatten(cfg_variant.model_dump(mode="json"))
    n = cfg.evaluate.test_episodes
    assert rows[0]["scores"]["student"]["successes"] == round(0.5 * n) and rows[0]["scores"]["student"]["n"] == n
    assert rows[1]["scores"]["student"]["n"] == 4 and rows[1]["scores"]["student"]["mean_tokens"] == 12.0
    assert rows[0]["retention_drops"] == {"rg.leg_counting": 0.2} and rows[1]["kl"] == 0.01

    table = markdown(rows)
    assert table.count("\n") == 3 and "distill.lora.r=2" in table and "+0.200" in table


def test_replicates_of_one_recipe_form_one_arm_with_their_spread(tmp_path):
    base = {"data_dir": str(tmp_path)}
    scores = {"eval.random.success": 0.25, "eval.base.success": 0.0}
    runs = [
        ({}, 0.5, "aaaa1111"),
        ({"distill": {"seed": 1}, "registry": {"model_name": "rep"}}, 0.25, "aaaa1111"),
        ({"runtime": {"seed": 2}}, 0.75, "bbbb2222"),  # a new run seed also redraws the teacher's samples
        ({"distill": {"lora": {"r": 2}}}, 0.5, "aaaa1111"),
    ]
    for override, rate, data in runs:
        cfg = load_config("test", merge_overrides(base, override))
        _logged_run(cfg, {**scores, "eval.student.success": rate}, {"r2w.trajectories_dataset": data + "ffff"})

    arms = recipe_arms(experiment_rows("test", base))
    assert [a["recipe"] for a in arms] == [{}, {"distill.lora.r": 2}]
    configured, rank = arms
    assert len(configured["runs"]) == 3 and configured["teacher_datasets"] == 2
    assert configured["mean"] == 0.5 and abs(configured["sd"] - 0.25) < 1e-9
    assert len(rank["runs"]) == 1 and rank["sd"] is None
    table = arms_markdown(arms)
    assert "| (as configured) | 3 | 2 |" in table and "25.0%" in table and "| distill.lora.r=2 | 1 | 1 |" in table
