"""A planted degraded student is rejected by the forgetting gates, with the failing checks named.

The tiny model is fine-tuned on nonsense completions to real agent prompts (corrupted data).
A few LoRA steps barely move the random 2-layer model (KL ~0.006-0.03 nats/token after 8-16
steps at lr 5e-3..5e-2, measured), so the planted damage is made unmistakable by also corrupting
the merged weights (Gaussian noise at 10x each matrix's std, as a broken merge/export would; at
1x the random model stays near uniform and passes). The student then goes through the real
evaluate + gate stages with realistic thresholds, and register_student must register nothing.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from r2w.agent_prompt import build_messages
from r2w.config import load_config
from r2w.contracts import DistillExample

REALISTIC_GATES = {"max_kl": 0.5, "max_retention_drop": 0.1, "max_perplexity_drift": 0.05, "min_gain_over_base": -1.0}


def corrupted_examples(n: int = 16) -> list[DistillExample]:
    rng = random.Random(0)
    letters = "qxzjkvw"
    out = []
    for i in range(n):
        prompt = build_messages(
            "Tidy up the house.", f"You are in the kitchen ({i}). A shoe is on the floor.", ["take shoe", "look"], []
        )
        junk = " ".join(rng.choice(letters) * 4 for _ in range(8))  # a few junk tokens, over and over
        out.append(
            DistillExample(
                example_id=f"junk{i}", task_id=f"t{i}", category="twc", prompt=prompt, completion=junk, trajectory_id=""
            )
        )
    return out


@pytest.fixture(scope="module")
def degraded(tiny_model: Path, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from r2w.backends.hf import TransformersBackend
    from r2w.config import DistillConfig, LoraConfig
    from tasks.distill import train_student

    out = tmp_path_factory.mktemp("degraded")
    cfg = DistillConfig(max_steps=4, batch_size=4, bf16=False, learning_rate=5e-3, lora=LoraConfig(r=4, alpha=16))
    art = train_student(corrupted_examples(), tiny_model, cfg, out / "student", seed=0)
    model = AutoModelForCausalLM.from_pretrained(art.merged_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * param.std() * 10)
    model.save_pretrained(art.merged_dir)  # the corrupted weights are what gets evaluated (and offered to the registry)
    return art, TransformersBackend(art.merged_dir, dtype="float32"), out


def test_degraded_student_is_rejected_and_not_registered(degraded, tiny_backend):
    from r2w.tracking import client_for, start_run
    from tasks.gate import evaluate, gate
    from tasks.register import register_student

    art, student_backend, out = degraded
    cfg = load_config("test", {"data_dir": str(out / "data"), "gate": REALISTIC_GATES})
    evaluation = evaluate(cfg, tiny_backend, student_backend, lambda category, query, k: [], "no-hints")
    ret = evaluation.retention
    assert {"ppl_base", "ppl_student", "ppl_drift", "drop:coin", "drop:rg:leg_counting"} <= set(ret)
    report, report_dir = gate(cfg, evaluation, {"leak_remaining": 0}, out / "gate", {"config_hash": cfg.hash})

    failed = {c.name for c in report.checks if not c.passed}
    assert not report.passed
    assert {"kl_to_base", "perplexity_drift"} <= failed, (failed, ret)
    assert any(r.startswith("kl_to_base:") for r in report.reasons)
    assert "FAILED" in (report_dir / "gate_report.md").read_text()

    client = client_for(cfg)
    run_id = start_run(client, cfg, "degraded")
    reg = register_student(cfg, run_id, report, report_dir, art.adapter_dir, art.merged_dir, {"config_hash": cfg.hash})
    assert not reg.registered and "kl_to_base" in reg.reason
    assert client.search_model_versions(f"name='{cfg.registry.model_name}'") == []
    assert client.get_run(run_id).data.tags["r2w.gate"] == "failed"


def test_same_gates_pass_the_base_against_itself(tiny_backend, tmp_path):
    """The control: the realistic thresholds are not simply impossible (student = base passes them)."""
    from tasks.gate import measure_retention

    cfg = load_config("test", {"data_dir": str(tmp_path), "gate": REALISTIC_GATES})
    ret = measure_retention(cfg, tiny_backend, tiny_backend.model)
    assert ret["kl_base_student"] == pytest.approx(0.0, abs=1e-6) and ret["ppl_drift"] == pytest.approx(0.0, abs=1e-6)
    assert ret["drop:rg:leg_counting"] == pytest.approx(0.0, abs=1e-6)
