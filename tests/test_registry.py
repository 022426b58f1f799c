"""Registry round trip against both stores: a SQLite file and a real `mlflow server` on loopback.

register (challenger, lineage tags, gate report as description) -> no champion until a person
promotes -> promote v1, then v2 -> rollback returns champion to v1. The server variant is marked
`stack` (the server alone takes ~30 s to come up on this box): `pytest -m stack tests/test_registry.py`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from r2w.config import load_config
from r2w.contracts import DistillExample, Message


@pytest.fixture(scope="session")
def tiny_student(tiny_model: Path, session_dir: Path):
    """A real 2-step LoRA student of the tiny model (adapter + merged folders)."""
    from r2w.config import DistillConfig, LoraConfig
    from tasks.distill import train_student

    examples = [
        DistillExample(
            example_id=f"e{i}",
            task_id=f"t{i}",
            category="twc",
            prompt=[Message(role="user", content=f"Observation: a shoe lies on the floor ({i}).\nNext action:")],
            completion="take shoe",
            trajectory_id=f"t{i}-0",
        )
        for i in range(4)
    ]
    cfg = DistillConfig(max_steps=2, batch_size=2, bf16=False, learning_rate=1e-3, lora=LoraConfig(r=2, alpha=4))
    return train_student(examples, tiny_model, cfg, session_dir / "registry-student", seed=0)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` (SQLite backend, proxied artifacts) on a free loopback port; stopped after the module."""
    from flows.stack import BIN, _start, _wait, free_port

    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    service = _start(
        "mlflow",
        [
            *(str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'm.db'}"),
            *("--artifacts-destination", (folder / "art").as_uri()),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        port,
        "/health",
        folder,
    )
    try:
        _wait(service, timeout=150)
        yield service.url
    finally:
        os.killpg(service.pid, signal.SIGTERM)  # _start made it a session leader: its group is only this server


POLICIES = ("random", "base", "base+hints", "student")


def _passing_report(report_dir: Path):
    from evaluation.gates import apply_gates
    from evaluation.report import render_markdown
    from r2w.config import GateConfig
    from r2w.contracts import PolicyScore

    low = dict(n=4, successes=2, rate=0.5, ci_low=0.15, ci_high=0.85)
    high = dict(n=4, successes=3, rate=0.75, ci_low=0.3, ci_high=0.95)
    scores = [PolicyScore(policy=p, **(high if p in ("base+hints", "student") else low)) for p in POLICIES]
    report = apply_gates(GateConfig(), scores, {"kl_base_student": 0.01, "drop:coin": 0.0}, {"leak_remaining": 0})
    assert report.passed, report.reasons
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "gate_report.md").write_text(render_markdown(report, {"config_hash": "abc"}))
    return report


def _round_trip(tracking_uri: str | None, data_dir: Path, student) -> None:
    from r2w.registry import promote_version, rollback_champion
    from r2w.tracking import client_for, start_run
    from tasks.register import register_student

    overrides = {"data_dir": str(data_dir), "registry": {"model_name": "r2w-registry-test"}}
    if tracking_uri:
        overrides["registry"]["tracking_uri"] = tracking_uri
    cfg = load_config("test", overrides)
    client = client_for(cfg)
    name = cfg.registry.model_name
    report = _passing_report(data_dir / "gate")
    lineage = {"failures_dataset": "f" * 16, "training_dataset": "t" * 16, "config_hash": cfg.hash}

    versions = []
    for i in range(2):
        run_id = start_run(client, cfg, f"registry-test-{i}")
        reg = register_student(cfg, run_id, report, data_dir / "gate", student.adapter_dir, student.merged_dir, lineage)
        assert reg.registered, reg.reason
        versions.append(reg.version)
        assert str(client.get_model_version_by_alias(name, "challenger").version) == reg.version  # challenger moves
    assert versions == ["1", "2"]

    v2 = client.get_model_version(name, "2")
    assert v2.tags["r2w.failures_dataset"] == "f" * 16 and v2.tags["r2w.gate"] == "passed"
    assert v2.tags["r2w.check.kl_to_base"].endswith("pass") and "r2w.adapter_uri" in v2.tags
    assert "gate report: PASSED" in v2.description
    files = {Path(a.path).name for a in client.list_artifacts(v2.run_id, "student/merged")}
    assert "config.json" in files  # the weights went to the store (proxied through the server there)
    with pytest.raises(MlflowException):  # registering never makes a champion
        client.get_model_version_by_alias(name, "champion")

    assert promote_version(cfg, "1", by="alice", reason="reviewed v1") is None
    assert promote_version(cfg, "2", by="bob", reason="reviewed v2") == "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert client.get_model_version(name, "2").tags["r2w.promoted_by"] == "bob"
    assert rollback_champion(cfg, by="carol", reason="v2 regressed") == "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"  # rollback leaves it
    assert client.get_model_version(name, "2").tags["r2w.rolled_back"].startswith("carol")
    with pytest.raises(ValueError, match="no earlier champion"):  # v1 was the first champion
        rollback_champion(cfg, by="carol", reason="again")


def test_registry_round_trip_sqlite(tmp_path, tiny_student):
    _round_trip(None, tmp_path, tiny_student)


@pytest.mark.stack
def test_registry_round_trip_mlflow_server(tmp_path, tiny_student, mlflow_server):
    _round_trip(mlflow_server, tmp_path, tiny_student)


def _logits(model_dir: Path, adapter: Path | None = None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([[3, 17, 41, 5, 9, 23]])).logits


def test_regate_puts_a_champion_round_adapter_on_the_champion(tmp_path, tiny_model, tiny_student):
    """`r2w evaluate` of a version trained with init_from=champion must load its adapter on the
    champion's merged model (what it was trained on), not on the configured base."""
    from flows.evaluate import registered_student
    from r2w.config import DistillConfig, LoraConfig
    from r2w.registry import Lineage, promote_version
    from r2w.tracking import client_for, start_run
    from tasks.distill import resolve_student_base, train_student
    from tasks.register import register_student

    overrides = {"data_dir": str(tmp_path), "models": {"base": str(tiny_model)}, "registry": {"model_name": "r2w-cr"}}
    cfg = load_config("test", overrides)
    client = client_for(cfg)
    report = _passing_report(tmp_path / "gate")
    first = Lineage(config_hash=cfg.hash, base_model=str(tiny_model), student="v1")
    reg = register_student(cfg, start_run(client, cfg, "v1"), report, tmp_path / "gate",
                           tiny_student.adapter_dir, tiny_student.merged_dir, first)  # fmt: skip
    promote_version(cfg, reg.version, by="alice", reason="reviewed")

    round2 = load_config("test", {**overrides, "distill": {"init_from": "champion"}})
    start = resolve_student_base(round2, tiny_model)
    assert start.parent_version == "1"
    examples = [e.model_copy(update={"completion": "open door"}) for e in _examples()]
    distill = DistillConfig(max_steps=2, batch_size=2, bf16=False, learning_rate=5e-2, lora=LoraConfig(r=2, alpha=4))
    student = train_student(examples, start.path, distill, tmp_path / "round2", seed=1)
    lineage = Lineage(config_hash=cfg.hash, base_model=str(tiny_model), student_base=str(start.path),
                      parent_version=start.parent_version, student="v2")  # fmt: skip
    reg2 = register_student(cfg, start_run(client, cfg, "v2"), report, tmp_path / "gate",
                            student.adapter_dir, student.merged_dir, lineage)  # fmt: skip

    student_base, adapter = registered_student(cfg, reg2.version)
    loaded = _logits(student_base, adapter)
    merged = _logits(student.merged_dir)  # what was trained and verified: adapter on the champion, merged
    on_original_base = _logits(tiny_model, adapter)
    right = (loaded - merged).abs().max().item()
    wrong = (on_original_base - merged).abs().max().item()
    assert right < 1e-4 and wrong > 100 * max(right, 1e-6), (right, wrong)


def _examples() -> list[DistillExample]:
    return [
        DistillExample(
            example_id=f"c{i}",
            task_id=f"c{i}",
            category="twc",
            prompt=[Message(role="user", content=f"Observation: a door is closed ({i}).\nNext action:")],
            completion="open door",
            trajectory_id=f"c{i}-0",
        )
        for i in range(4)
    ]
