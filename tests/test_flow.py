"""The whole retrain flow through Prefect on the tiny model: real Chroma, TRL, MLflow registry."""

from __future__ import annotations

import pytest

from r2w.config import load_config
from r2w.contracts import Episode
from r2w.datasets import load_records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("flow")


@pytest.fixture(scope="module")
def optimized(data_dir):
    """The scheduled optimize-extractor flow ran first: the retrain run extracts with `latest`."""
    from flows.optimize import optimize_extractor

    return optimize_extractor(
        config="test", overrides={"data_dir": str(data_dir), "hints.optimize.max_metric_calls": 2}
    )


@pytest.fixture(scope="module")
def passing_run(data_dir, optimized):
    from flows.retrain import retrain

    return retrain(config="test", overrides={"data_dir": str(data_dir), "hints.extractor.program": "latest"})


def _client(data_dir):
    from r2w.tracking import client_for

    cfg = load_config("test", {"data_dir": str(data_dir)})
    return cfg, client_for(cfg)


def test_passing_student_is_registered_as_challenger_with_lineage(passing_run, optimized, data_dir):
    summary = passing_run
    assert summary.episodes == 4 and summary.failures >= 1
    assert summary.trajectories_kept >= 1 and summary.training_examples >= 1
    assert summary.gate_passed, summary.reasons
    assert summary.registered_version == "1"
    cfg, client = _client(data_dir)
    version = client.get_model_version_by_alias(cfg.registry.model_name, "challenger")
    assert str(version.version) == "1"
    tags = version.tags
    for key in ("failures_dataset", "hint_snapshot", "training_dataset", "trajectories_dataset", "config_hash"):
        assert tags.get(f"r2w.{key}"), key
    assert tags["r2w.gate"] == "passed" and "r2w.check.kl_to_base" in tags
    assert "gate report: PASSED" in version.description
    # the compiled extractor the optimize flow made is named by its content hash in the version's lineage
    assert tags["r2w.extractor_program"] == optimized["program_hash"] != ""
    assert optimized["program"].endswith(f"extractor-{optimized['program_hash']}.json")
    # the extractor was shown the environment's correct actions (TWX gold paths, replayed)
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["hints.gold_given"] >= 1 and metrics["hints.contrastive"] >= 1
    # lineage leads back to the stored failures
    failures_dir = data_dir / "datasets" / "failures" / tags["r2w.failures_dataset"][:16]
    assert len(load_records(failures_dir, Episode)) == summary.failures
    # nothing is promoted automatically
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(cfg.registry.model_name, "champion")


def test_a_reviewer_finds_transcript_hints_loss_curve_and_plot_in_mlflow(passing_run, data_dir):
    import json

    cfg, client = _client(data_dir)
    version = client.get_model_version(cfg.registry.model_name, passing_run.registered_version)
    files = {a.path for a in client.list_artifacts(version.run_id, "gate")}
    assert {"gate/transcript.md", "gate/hints.json", "gate/gate_report.png", "gate/gate_report.md"} <= files
    local = client.download_artifacts(version.run_id, "gate", str(data_dir / "review"))
    transcript = (data_dir / "review" / "gate" / "transcript.md").read_text()
    assert "paired tasks" in transcript and "**base**" in transcript and "**student**" in transcript, local
    hints = json.loads((data_dir / "review" / "gate" / "hints.json").read_text())
    assert hints["snapshot"] == version.tags["r2w.hint_snapshot"] and hints["hints"]
    losses = client.get_metric_history(version.run_id, "train.loss")
    assert len(losses) >= 2 and sorted(m.step for m in losses) == list(range(len(losses)))


def test_impossible_gate_registers_nothing(passing_run, data_dir):
    from flows.retrain import retrain

    summary = retrain(
        config="test",
        overrides={"data_dir": str(data_dir), "gate": {"max_kl": 0.0, "min_gain_over_base": 1.0}},
    )
    assert not summary.gate_passed and summary.registered_version is None
    assert any(r.startswith("kl_to_base") for r in summary.reasons)
    cfg, client = _client(data_dir)
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.tags["r2w.gate"] == "failed" and "kl_to_base" in run.data.tags["r2w.gate_reasons"]
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id, "gate")}
    assert "gate/gate_report.md" in artifacts


def test_promote_and_rollback_need_a_person(passing_run, data_dir):
    from r2w.registry import promote_version, rollback_champion

    cfg, client = _client(data_dir)
    with pytest.raises(ValueError, match="--by and --reason"):
        promote_version(cfg, "1", by="", reason="")
    assert promote_version(cfg, "1", by="alice", reason="reviewed gate report") is None
    assert str(client.get_model_version_by_alias(cfg.registry.model_name, "champion").version) == "1"
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback_champion(cfg, by="alice", reason="oops")


def test_evaluate_flow_regates_a_registered_version(passing_run, data_dir):
    from flows.evaluate import evaluate_version

    result = evaluate_version("1", config="test", overrides={"data_dir": str(data_dir)})
    assert result.passed  # the permissive test gates again
    cfg, client = _client(data_dir)
    tag = client.get_model_version(cfg.registry.model_name, "1").tags["r2w.regate"]
    assert tag.startswith("passed") and result.mlflow_run_id in tag
    strict = evaluate_version("1", config="test", overrides={"data_dir": str(data_dir), "gate": {"max_kl": 0.0}})
    assert not strict.passed and any(r.startswith("kl_to_base") for r in strict.reasons)


def test_status_cli_shows_runs_and_aliases(passing_run, data_dir):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["status", "--config", "test", "--set", f"data_dir={data_dir}"])
    assert result.exit_code == 0, result.output
    assert "challenger" in result.output and passing_run.mlflow_run_id[:12] in result.output


def test_replay_rows_join_the_training_set_and_its_lineage(passing_run, data_dir):
    """Replay adds the base's own answers to the SFT set; teacher rows and cached stages are untouched."""
    from flows.retrain import retrain
    from r2w.contracts import DistillExample

    replay = {"families": ["letter_counting"], "examples": 3, "temperature": 1.0}  # tiny model's greedy reply is ''
    summary = retrain(
        config="test",
        overrides={"data_dir": str(data_dir), "distill": {"replay": replay}, "gate": {"max_kl": 0.0}},
    )
    assert summary.stage_states["teach"] == "Cached" and summary.stage_states["replay"] == "Completed"
    assert summary.training_examples == passing_run.training_examples  # counts teacher rows only
    assert summary.registered_version is None  # impossible gate: nothing registered, lineage still tagged
    _, client = _client(data_dir)
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.metrics["leakage.replay"] + run.data.metrics["leakage.replay_empty"] == 3
    dataset = run.data.tags["r2w.training_dataset"]
    rows = load_records(data_dir / "datasets" / "distill-examples" / dataset[:16], DistillExample)
    replayed = [r for r in rows if r.category == "replay"]
    assert len(replayed) == run.data.metrics["leakage.replay"] >= 1
    assert all(r.task_id.startswith("replay:reasoning_gym/letter_counting/") for r in replayed)
    assert len(rows) - len(replayed) == passing_run.training_examples + sum(r.split == "validation" for r in rows)
