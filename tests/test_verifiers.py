"""The verifier seam (r2w/verifiers.py): a team's callable, an LLM judge ranking one task's attempts, and the
teach stage keeping what the configured verifier accepts.

No LLM judge runs here, so the judge is `judge_server()`: the tests' named fake `FakeOpenAIServer`
(tests/fake_openai.py), a real HTTP server on loopback speaking the OpenAI chat-completions API, answering
scores (or a malformed reply) that the test decides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from r2w.config import ConfigError, VerifyConfig, load_config
from r2w.contracts import Episode, Message, Step, Trajectory
from r2w.datasets import load_records
from r2w.plugins import PluginError
from r2w.verifiers import make_verifier, verify_episodes, verify_group
from tests.fake_openai import FakeOpenAIServer

_BLOCK = re.compile(r'<trajectory id="(\d+)">\n(.*?)\n</trajectory>', re.DOTALL)


def judge_server(
    score: Callable[[str, str], float] | None = None, reply: Callable[[str], str] | None = None
) -> FakeOpenAIServer:
    """A fake judge: scores each `<trajectory id="k">` block of the last user message with `score(id, text)`,
    or answers `reply(last user message)` verbatim (malformed replies)."""
    score = score or (lambda _id, _text: 0.0)

    def answer(messages: list[dict]) -> str:
        user = messages[-1]["content"]
        if reply is not None:
            return reply(user)
        return json.dumps({"scores": [{"trajectory_id": i, "explanation": "ok", "score": score(i, text)}
                                      for i, text in _BLOCK.findall(user)]})  # fmt: skip

    return FakeOpenAIServer(answer, model="fake-judge")


def attempt(answer: str, sample: int = 0, task: str = "t1") -> Episode:
    """A finished one-step attempt whose prompt carried a hints block (the judge must never see it)."""
    prompt = [Message(role="system", content="HINT-BLOCK-7 be brief"), Message(role="user", content="Say yes.")]
    step = Step(index=0, observation="Say yes.", prompt=prompt, response=answer, action=answer)
    return Episode(episode_id=f"e-{task}-{sample}", env="fake", category="c", task_id=f"fake/c/train/{task}",
                   split="train", seed=0, task="Say yes.", steps=[step], sample_index=sample)  # fmt: skip


def by_answer(_id: str, text: str) -> float:
    return 0.9 if "yes" in text else 0.6 if "maybe" in text else 0.1


# ---------------------------------------------------------------------------------------------- callable


def test_a_callable_verifier_keeps_and_rejects_as_the_function_says():
    cfg = VerifyConfig(kind="callable", callable="verifier_fns:says_yes")
    verdicts = verify_group(cfg, [attempt("yes", 0), attempt("no", 1), attempt("Yes!", 2)])
    assert [v.keep for v in verdicts] == [True, False, True] and [v.score for v in verdicts] == [1.0, 0.0, 1.0]
    assert {v.verdict_by for v in verdicts} == {"callable:verifier_fns:says_yes"}
    assert not any(v.judged for v in verdicts)
    scored = verify_group(VerifyConfig(kind="callable", callable="verifier_fns:answer_length", keep_threshold=4),
                          [attempt("yes", 0), attempt("yes it is", 1)])  # fmt: skip
    assert [(v.keep, v.score) for v in scored] == [(False, 3.0), (True, 9.0)]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("verifier_fns:raising", r"verify.callable verifier_fns:raising: task fake/c/train/t1: raised KeyError"),
        ("verifier_fns:wrong_type", r"verifier_fns:wrong_type: task fake/c/train/t1: returned str, expected bool or a"),
        ("verifier_fns:hanging", r"hanging: task fake/c/train/t1: did not answer within verify.timeout_s=0.3"),
        ("verifier_fns:NOT_A_FUNCTION", r"verify.callable: verifier_fns:NOT_A_FUNCTION is a int, expected a function"),
        ("verifier_fns:missing", r"verify.callable: module 'verifier_fns' has no attribute 'missing'"),
        ("no_such_pkg.mod:fn", r"verify.callable: cannot import module 'no_such_pkg.mod'"),
    ],
)  # fmt: skip
def test_a_bad_callable_gets_an_error_naming_callable_task_and_field(path, message):
    with pytest.raises(PluginError, match=message):
        verify_group(VerifyConfig(kind="callable", callable=path, timeout_s=0.3), [attempt("yes")])


def test_verify_config_errors_name_the_field_and_never_echo_a_pasted_key(tmp_path):
    with pytest.raises(ConfigError, match="verify.callable: expected an import path"):
        load_config("test", {"data_dir": str(tmp_path), "verify": {"kind": "callable"}})
    pasted = "q8Zr-not-a-name-but-a-key-5521"
    with pytest.raises(ConfigError, match="verify.api_key_env: expected the NAME") as err:
        load_config("test", {"data_dir": str(tmp_path), "verify": {"kind": "judge", "api_key_env": pasted}})
    assert pasted not in str(err.value)
    with pytest.raises(ValueError, match="verify.api_key_env: the environment variable R2W_UNSET_JUDGE_KEY is not set"):
        make_verifier(VerifyConfig(kind="judge", judge_url="http://127.0.0.1:9/v1", api_key_env="R2W_UNSET_JUDGE_KEY"))


# ---------------------------------------------------------------------------------------------- judge


def test_the_judges_ranking_and_the_threshold_decide_which_attempts_are_kept(monkeypatch):
    key = "judge-key-5f1c2e9d0b"
    monkeypatch.setenv("R2W_TEST_JUDGE_KEY", key)
    group = [attempt("no", 0), attempt("yes", 1), attempt("maybe", 2), attempt("yes", 3)]
    with judge_server(score=by_answer) as judge:
        base = {"kind": "judge", "judge_url": judge.url, "api_key_env": "R2W_TEST_JUDGE_KEY"}
        kept = [v.keep for v in verify_group(VerifyConfig(**base, keep_threshold=0.5), group)]
        top1 = [v.keep for v in verify_group(VerifyConfig(**base, keep_threshold=0.5, keep_top=1), group)]
        strict = verify_group(VerifyConfig(**base, keep_threshold=0.95), group)
    assert kept == [False, True, True, True]
    assert top1 == [False, True, False, False]  # the best, ties broken by attempt order
    assert not any(v.keep for v in strict) and [v.score for v in strict] == [0.1, 0.9, 0.6, 0.9]
    assert {(v.verdict_by, v.judged) for v in strict} == {("judge:fake-judge", True)}
    assert len(judge.requests) == 3  # one request per task group, all attempts in it
    headers, body = judge.requests[0].headers, judge.requests[0].body
    prompt = body["messages"][-1]["content"]
    assert [i for i, _ in _BLOCK.findall(prompt)] == ["1", "2", "3", "4"] and "HINT-BLOCK-7" not in json.dumps(body)
    assert headers["Authorization"] == f"Bearer {key}"


def test_a_malformed_judge_reply_keeps_nothing_for_its_task_and_is_counted():
    groups = [attempt("yes", 0, "good"), attempt("no", 1, "good"), attempt("yes", 0, "bad"), attempt("yes", 1, "bad")]

    def reply(user: str) -> str:
        if 'id="2">\nassistant: no' in user:  # the "good" task's prompt gets a well-formed reply
            return json.dumps({"scores": [{"trajectory_id": "1", "score": 0.8}, {"trajectory_id": "2", "score": 0.2}]})
        return "Attempt 1 is clearly the best one, I would give it a 9/10."

    with judge_server(reply=reply) as judge:
        verifier = make_verifier(VerifyConfig(kind="judge", judge_url=judge.url))
        episodes, verdicts = verify_episodes(verifier, groups)
        verifier.close()
    assert verifier.malformed == 1 and [v.keep for v in verdicts] == [True, False, False, False]
    assert all(v.problem.startswith("malformed judge reply") for v in verdicts[2:]) and not verdicts[0].problem
    assert [e.success for e in episodes] == [True, False, False, False]
    assert episodes[0].outcome == "judged: kept (score 0.80)"
    assert episodes[2].outcome.startswith("judged: rejected (malformed judge reply")
    assert {e.verdict_by for e in episodes} == {"judge:fake-judge"}


def test_the_local_judge_is_the_base_model_and_its_unparseable_replies_are_counted(tiny_backend):
    """No judge_url: the base model judges. The random tiny model cannot write the JSON: nothing kept, no crash."""
    verifier = make_verifier(VerifyConfig(kind="judge", judge_max_tokens=16), tiny_backend)
    _, verdicts = verify_episodes(verifier, [attempt("yes", 0, "a"), attempt("no", 1, "a"), attempt("yes", 0, "b")])
    assert verifier.label == f"judge:{Path(tiny_backend.model_path).name}"
    assert verifier.malformed == 2 and not any(v.keep for v in verdicts)


def test_the_env_verifier_is_todays_behaviour():
    won = attempt("yes").model_copy(update={"success": True, "score": 1.0, "verdict_by": "environment:fake"})
    episodes, verdicts = verify_episodes(make_verifier(VerifyConfig()), [won, attempt("no", 1)])
    assert episodes[0] == won and [v.keep for v in verdicts] == [True, False]
    assert [v.verdict_by for v in verdicts] == ["environment:fake", "env"] and episodes[1].verdict_by == "env"


# ---------------------------------------------------------------------------------------------- teach


def _teach_cfg(tmp_path: Path, verify: dict):
    return load_config(
        "test",
        {"data_dir": str(tmp_path / "data"), "env": {"name": "plugin_envs:CoinFlip", "max_steps": 1},
         "hints": {"k": 0}, "teach": {"tasks": 3, "samples": 4}, "agent": {"answer_max_new_tokens": 8},
         "verify": verify},
    )  # fmt: skip


def test_teach_keeps_the_attempts_the_callable_accepts(tmp_path, tiny_backend):
    from tasks.teach import teach

    result = teach(_teach_cfg(tmp_path, {"kind": "callable", "callable": "verifier_fns:even_sample"}),
                   tiny_backend, lambda category, query, k: [], "no-hints")  # fmt: skip
    episodes = load_records(result.episodes, Episode)
    kept = [t.episode for t in load_records(result.trajectories, Trajectory)]
    assert result.verified_by == "callable:verifier_fns:even_sample" and result.kept == 6 == len(kept)
    assert sorted(e.sample_index for e in kept) == [0, 0, 0, 2, 2, 2]
    # the callable set success=True on its copy: that write never reached the stored episodes
    assert [e.success for e in episodes] == [e.sample_index % 2 == 0 for e in episodes]
    assert {e.verdict_by for e in episodes} == {"callable:verifier_fns:even_sample"}


def test_the_judges_api_key_is_sent_but_never_stored_tracked_or_logged(
    tmp_path, monkeypatch, capfd, caplog, tiny_model
):
    """The whole retrain flow with a judge behind a URL (key in an env var): the judge gets the key as a Bearer
    header; no file under the data dir (datasets, MLflow db and artifacts, caches), no MLflow param or tag and
    no log line holds it."""
    import logging

    from mlflow.tracking import MlflowClient

    from flows.retrain import retrain
    from r2w.contracts import Hint

    key = "jk7Q2mX9vR4tL8wZ3pN6-judge"
    monkeypatch.setenv("R2W_TEST_JUDGE_KEY", key)
    caplog.set_level(logging.DEBUG)
    pack = tmp_path / "coin_pack.jsonl"
    hint = Hint(hint_id=Hint.make_id("call flip once", "coin"), text="call flip once",
                applicability="WHEN asked to call it", category="coin", source="curated")  # fmt: skip
    pack.write_text(hint.model_dump_json() + "\n")
    data = tmp_path / "data"
    with judge_server(score=lambda i, _text: 0.9 if i == "1" else 0.2) as judge:
        overrides = {
            "data_dir": str(data), "models": {"base": str(tiny_model)},
            "env": {"name": "plugin_envs:CoinFlip", "max_steps": 1}, "agent": {"answer_max_new_tokens": 8},
            "hints": {"collection": "r2w-hints-coin", "curated_packs": [str(pack)]},
            "collect": {"episodes": 4}, "teach": {"tasks": 3, "samples": 4},
            "verify": {"kind": "judge", "judge_url": judge.url, "api_key_env": "R2W_TEST_JUDGE_KEY"},
            "registry": {"model_name": "r2w-judged-student"}, "distill": {"max_steps": 1},
            "evaluate": {"retention_tasks": 1, "test_episodes": 2, "random_episodes": 4, "general_passages": 2},
        }  # fmt: skip
        summary = retrain(config="test", overrides=overrides)
    assert summary.trajectories_kept == 3, summary  # the judge's best attempt of each task
    assert judge.requests and {r.auth for r in judge.requests} == {f"Bearer {key}"}
    (taught,) = list((data / "datasets" / "teacher-episodes").iterdir())
    episodes = load_records(taught, Episode)
    assert {e.verdict_by for e in episodes} == {"judge:fake-judge"} and all(
        e.outcome.startswith("judged:") for e in episodes
    )
    assert sorted(e.sample_index for e in episodes if e.success) == [0, 0, 0]
    leaks = [str(p) for p in data.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaks, leaks
    client = MlflowClient(f"sqlite:///{data / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and runs[0].data.params["verify.api_key_env"] == "R2W_TEST_JUDGE_KEY"
    assert not [k for r in runs for k, v in {**r.data.params, **r.data.tags}.items() if key in v]
    out, err = capfd.readouterr()
    assert key not in out + err + caplog.text


def test_judge_agreement_scores_the_judge_against_the_env_and_hides_the_envs_feedback():
    """evaluation/benchmarks/judge_agreement.py's arithmetic, on a fake judge that keeps every 'yes'."""
    from evaluation.benchmarks.judge_agreement import judge_groups

    def judged(answer: str, sample: int, task: str, success: bool) -> Episode:
        ep = attempt(answer, sample, task)
        feedback = Message(role="user", content="Correct: the calls match." if success else "Wrong call.")
        steps = [ep.steps[0].model_copy(update={"tool_results": [feedback]})]
        return ep.model_copy(update={"success": success, "steps": steps})

    groups = [
        [judged("yes", 0, "a", True), judged("no", 1, "a", False), judged("yes", 2, "a", False)],
        [judged("no", 0, "b", True), judged("no", 1, "b", False), judged("no", 2, "b", False)],
    ]
    with judge_server(score=by_answer) as judge:
        verifier = make_verifier(VerifyConfig(kind="judge", judge_url=judge.url))
        result = judge_groups(verifier, groups, threshold=0.5)  # type: ignore[arg-type]
        verifier.close()
    assert not any("Correct" in r.last_user_message for r in judge.requests)
    assert result["base_rate"]["successes"] == 2 and result["base_rate"]["n"] == 6
    by_threshold, top1 = result["keep_threshold"], result["keep_top1"]
    assert (by_threshold["kept"], by_threshold["precision"], by_threshold["recall"]) == (2, 0.5, 0.5)
    assert (top1["kept"], top1["precision"], top1["recall"]) == (1, 1.0, 0.5)
    assert result["top1_position"] == {"1": 2, "2": 0, "3": 0} and result["malformed_groups"] == 0
