"""The issue-10 comparison script and its paired statistics (tiny model, real environments)."""

from __future__ import annotations

import json

import pytest

from evaluation.metrics import mcnemar_p, paired_difference


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 2**10)  # all 10 discordant pairs one way
    assert mcnemar_p(10, 2) == pytest.approx(0.0386, abs=1e-3)
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)


def test_paired_difference_sign_and_interval():
    diff, low, high = paired_difference({"both": 10, "only_a": 30, "only_b": 5, "neither": 155})
    assert diff == pytest.approx(25 / 200)
    assert low < diff < high and low > 0  # 30 vs 5 discordant pairs: clearly positive
    diff, low, high = paired_difference({"both": 0, "only_a": 3, "only_b": 3, "neither": 194})
    assert diff == 0 and low < 0 < high


def test_heldout_comparison_runs_every_policy_on_the_same_seeds(tiny_model, tmp_path):
    from evaluation.benchmarks.heldout_comparison import main

    out = tmp_path / "result.json"
    result = main(
        [
            "--config", "test",
            "--set", f"data_dir={tmp_path}",
            "--set", "evaluate.retention_families=[]",
            "--student", str(tiny_model),
            "--n", "3",
            "--retention-max-steps", "2",
            "--backend", "transformers",
            "--out", str(out),
            "--save-episodes",
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    from evaluation.benchmarks.paired_episodes import policy_episodes

    for policy in ("random", "base", "base-sampled", "teacher", "teacher-sampled", "student"):
        assert len(policy_episodes(saved["meta"]["episodes"], policy)) == 3
    assert saved["scores"].keys() == {
        "random", "base greedy", "base sampled", "teacher greedy", "teacher sampled", "student"
    }  # fmt: skip
    assert all(s["n"] == 3 for s in saved["scores"].values())
    # the student IS the base model here: greedy play must match the base seed for seed
    student_vs_base = next(c for c in saved["comparisons"] if c["b"] == "base greedy")
    assert student_vs_base["table"]["only_a"] == student_vs_base["table"]["only_b"] == 0
    assert saved["retention"]["coin"]["paired"]["diff"] == 0
    assert result["meta"]["n"] == 3
    # the retention game runs on its own step budget, not the trained game's
    assert saved["retention"]["coin"]["base"]["mean_steps"] <= 2 < result["meta"]["env"]["max_steps"]


def test_action_selection_benchmark_pairs_generate_and_score_on_the_same_seeds(tiny_model, tmp_path):
    from evaluation.benchmarks.action_selection import main
    from r2w.contracts import Episode
    from r2w.datasets import save_records

    args = ["--config", "test", "--set", f"data_dir={tmp_path}", "--set", "env.max_steps=3", "--n", "3"]
    result = main([*args, "--model", f"tiny={tiny_model}", "--out", str(tmp_path / "sel.json")])
    assert set(result["scores"]) == {"tiny generate", "tiny score"}
    assert all(s["n"] == 3 for s in result["scores"].values())
    [paired] = result["comparisons"]
    assert sum(paired["table"].values()) == 3 and json.loads((tmp_path / "sel.json").read_text())["scores"]
    # --pair-with: the generate arm comes from stored episodes of the same seeds, not a replay
    stored = [
        Episode(
            episode_id=f"e{i}",
            env="twx",
            category="twc",
            task_id=f"twx/twc/test/{20000 + i}",
            split="test",
            seed=20000 + i,
            task="t",
            success=True,
            policy="tiny",
        )
        for i in range(3)
    ]
    ref = save_records(stored, tmp_path / "datasets", "eval-episodes")
    again = main([*args, "--model", f"tiny={tiny_model}", "--modes", "generate,score", "--pair-with", ref.path])
    assert again["scores"]["tiny generate"]["successes"] == 3 and "tiny generate" not in again["seconds"]
    assert again["scores"]["tiny score"] == result["scores"]["tiny score"]  # greedy scoring is deterministic


def test_pass_at_n_is_the_unbiased_estimate():
    from evaluation.benchmarks.hint_k import pass_at_n
    from r2w.contracts import Episode

    def ep(task: str, i: int, success: bool) -> Episode:
        return Episode(episode_id=f"{task}-{i}", env="twx", category="twc", task_id=task, split="train", seed=0,
                       task="t", success=success, policy="teacher")  # fmt: skip

    # task a: 1 success in 4 attempts; task b: none; task c: all four
    eps = [ep("a", i, i == 0) for i in range(4)] + [ep("b", i, False) for i in range(4)]
    eps += [ep("c", i, True) for i in range(4)]
    got = pass_at_n(eps)
    assert got["tasks"] == 3 and got["attempts_per_task"] == 4 and set(got["pass_at"]) == {1, 2, 4}
    assert got["pass_at"][1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert got["pass_at"][2] == pytest.approx((0.5 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2) = 0.5
    assert got["pass_at"][4] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="different attempt counts"):
        pass_at_n(eps[:-1])


def test_hint_k_benchmark_plays_each_k_on_the_same_seeds(tiny_model, tmp_path):
    from evaluation.benchmarks.hint_k import main
    from r2w.config import load_config
    from r2w.contracts import Hint
    from r2w.hintstore import HintStore

    args = ["--config", "test", "--set", f"data_dir={tmp_path}", "--set", "env.max_steps=2", "--n", "3"]
    cfg = load_config("test", {"data_dir": str(tmp_path)})
    text = "Take the misplaced item first, then put it where it belongs."
    hint = Hint(hint_id=Hint.make_id(text, "twc"), text=text, applicability="When an item is out of place",
                category="twc")  # fmt: skip
    HintStore(cfg.hints, cfg.data_path).upsert([hint], run_id="test")
    result = main([*args, "--k", "0,1", "--backend", "transformers", "--out", str(tmp_path / "k.json")])
    assert set(result["scores"]) == {"k=0", "k=1"} and all(s["n"] == 3 for s in result["scores"].values())
    assert result["meta"]["active_hints"] == 1
    assert result["meta"]["episodes_with_hints"] == {"k=0": 0, "k=1": 3}
    [paired] = result["comparisons"]
    assert (paired["a"], paired["b"]) == ("teacher k=1", "teacher k=0") and sum(paired["table"].values()) == 3
    with pytest.raises(SystemExit, match="--k"):
        main([*args, "--k", "-1"])


def test_paired_episodes_pairs_across_runs_and_policies(tmp_path):
    """A continual round's student against the original base: run B's base episodes, paired by seed."""
    from evaluation.benchmarks.paired_episodes import main
    from r2w.contracts import Episode
    from r2w.datasets import save_records

    def eps(policy: str, wins: set[int]) -> list[Episode]:
        return [Episode(episode_id=f"{policy}{i}", env="twx", category="twc", task_id=f"twx/twc/test/{i}",
                        split="test", seed=i, task="t", success=i in wins, policy=policy)
                for i in range(4)]  # fmt: skip

    round2 = save_records(eps("student", {0, 1, 2}), tmp_path / "r2", "eval-episodes")
    round1 = save_records(eps("base", {0}) + eps("student", {0, 1}), tmp_path / "r1", "eval-episodes")
    got = main([round2.path, round1.path, "--policy", "student", "--policy-b", "base"])
    assert got["table"] == {"both": 1, "only_a": 2, "only_b": 0, "neither": 1} and got["diff"] == pytest.approx(0.5)
    same = main([round2.path, round1.path])  # without --policy-b: student vs student
    assert same["table"]["only_a"] == 1 and same["diff"] == pytest.approx(0.25)
    with pytest.raises(SystemExit, match="no 'teacher' episodes"):
        main([round2.path, round1.path, "--policy-b", "teacher"])


def test_vllm_cuda_parity_exports_real_prompts_and_counts_agreement(tiny_backend, tmp_path):
    from evaluation.benchmarks.vllm_cuda_parity import export_prompts, summarize
    from evaluation.environments import make_environment
    from r2w.backends import SamplingParams
    from r2w.config import EnvConfig
    from r2w.datasets import save_records
    from r2w.rollout import LLMPolicy, run_episodes

    factory = make_environment(EnvConfig(game="twc", max_steps=3))
    policy = LLMPolicy(tiny_backend, "base", SamplingParams(max_tokens=8))
    episodes = run_episodes(factory, [(t, 0) for t in factory.tasks("test", 2)], policy, max_steps=3)
    ref = save_records(episodes, tmp_path, "eval-episodes")
    rows = export_prompts(ref.path, 4)
    assert len(rows) == 4 and all(r["policy"] == "base" and r["choices"] and r["messages"] for r in rows)
    assert rows == export_prompts(ref.path, 4)  # the draw is seeded
    with pytest.raises(ValueError, match="fewer than --n"):
        export_prompts(ref.path, 1000)

    def half(actions, samples):
        return {"actions": actions, "samples": samples, "valid": 3, "device": "cpu", "load_s": 1.0}

    halves = {
        "transformers": {**half(["a", "b", "c"], ["a", "a", "c"]), "greedy_s": 1.0, "sample_s": 1.0},
        "vllm": {**half(["a", "x", "c"], ["a", "b", "c"]), "greedy_s": 0.5, "sample_s": 1.0},
        "vllm-repeat": {**half(["a", "x", "c"], ["a", "b", "d"]), "greedy_s": 0.5, "sample_s": 1.0},
    }
    summary = summarize(halves, ["base", "teacher", "teacher"])
    assert summary["greedy_equal"] == 2 and summary["greedy_equal_by_policy"] == {"base": "1/1", "teacher": "1/2"}
    assert summary["vllm_samples_repeatable"] == 2 and summary["samples_equal_across_backends"] == 2
    assert summary["timings"]["vllm"]["greedy_prompts_per_s"] == 6.0
