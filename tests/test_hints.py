"""Hints stage: real Chroma (on disk and `chroma run`), real MiniLM embeddings, real DSPy adapters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from r2w.runtime import configure_environment, set_torch_threads

# dspy reads its cache dir at import: keep every cache of this test module out of the home dir.
configure_environment(Path(tempfile.mkdtemp(prefix="r2w-test-hints-")))
set_torch_threads(1)

from evaluation.environments import make_environment  # noqa: E402
from prompts.hints import PROMPT_VERSION, extract_hints, parse_hints, render_trajectory  # noqa: E402
from r2w.backends.base import Completion, SamplingParams  # noqa: E402
from r2w.backends.dspy_lm import make_extractor_lm  # noqa: E402
from r2w.config import ExtractorConfig, HintsConfig, load_config  # noqa: E402
from r2w.contracts import Episode, Hint, Message, Provenance, Step, SuccessReference, Trajectory  # noqa: E402
from r2w.datasets import save_records  # noqa: E402
from r2w.hintstore import HintStore  # noqa: E402
from tasks.hints import extract_and_store, extraction_inputs, pick_success, task_of  # noqa: E402

CURATED = Path(__file__).resolve().parent.parent / "configs" / "hints" / "twc_curated.jsonl"

# (hint a, hint b, should they merge under the default thresholds?)
DEDUP_PAIRS = [
    (
        ("WHEN a container is closed", "open it before putting anything in it."),
        ("WHEN the container is closed", "open it before you put anything in it"),
        True,
    ),
    (
        ("WHEN a {container} is closed", "open it before putting anything in it"),
        ("WHEN a {container} is closed", "open the {container} first before you put anything inside it"),
        True,
    ),
    (
        ("WHEN you hold an object", "put it in the container where it usually belongs"),
        ("WHEN you are holding an object", "put it into the container where it normally belongs"),
        True,
    ),
    (
        ("WHEN an object lies on the floor", "take it first"),
        ("WHEN the {object} lies on the floor", "take the {object} first"),
        True,
    ),
    (
        ("WHEN you hold the {object}", "put the {object} in the {container}"),
        ("WHEN the {object} is in the {container}", "take the {object} from the {container}"),
        False,
    ),
    (  # token-set ratio 92 and, with braces, cosine 0.96: only the verb tells them apart
        ("WHEN you hold the {object}", "put the {object} in the {container}"),
        ("WHEN you hold the {object}", "take the {object} out of the {container}"),
        False,
    ),
    (  # token-set ratio 94
        ("WHEN you hold the {object}", "drop the {object}"),
        ("WHEN you hold the {object}", "eat the {object}"),
        False,
    ),
    (  # cosine 0.97 and token-set ratio 100, opposite meaning
        ("WHEN an action had no effect", "repeat it"),
        ("WHEN an action had no effect", "do not repeat it"),
        False,
    ),
    (
        ("WHEN you hold clothes", "put clothes in the wardrobe"),
        ("WHEN you hold food", "put food in the fridge"),
        False,
    ),
    (
        ("WHEN a container is closed", "open it before putting anything in it"),
        ("WHEN an object lies on the floor", "take it first"),
        False,
    ),
]


def make_hint(applicability: str, text: str, category: str = "twc", episode: str = "ep-1", **kw) -> Hint:
    return Hint(
        hint_id=Hint.make_id(text, category),
        text=text,
        applicability=applicability,
        category=category,
        provenance=Provenance(episode_ids=[episode]),
        **kw,
    )


def failed_episode(i: int, category: str = "twc") -> Episode:
    steps = [
        Step(
            index=j,
            observation=f"You are in the kitchen (game {i}). The fridge is closed. Step {j}.",
            valid_actions=["open fridge", "take apple", "look around"],
            prompt=[Message(role="user", content="x")],
            response="look around",
            action="look around",
        )
        for j in range(3)
    ]
    return Episode(
        episode_id=f"ep-{i}",
        env="twx",
        category=category,
        task_id=f"task-{i}",
        split="train",
        seed=i,
        task="Tidy up the house by putting each object in its usual location.",
        steps=steps,
        success=False,
        outcome="You ran out of steps.",
    )


@pytest.fixture
def store(tmp_path: Path) -> HintStore:
    return HintStore(HintsConfig(), tmp_path)


def test_dedup_merges_paraphrases_and_keeps_distinct_hints(store: HintStore) -> None:
    batch = []
    for i, (a, b, _) in enumerate(DEDUP_PAIRS):
        batch += [
            make_hint(*a, category=f"pair{i}", episode="ep-a"),
            make_hint(*b, category=f"pair{i}", episode="ep-b"),
        ]
    counts = store.upsert(batch, run_id="run-1")
    merges = sum(expected for *_, expected in DEDUP_PAIRS)
    assert counts == {"added": 2 * len(DEDUP_PAIRS) - merges, "merged": merges, "unchanged": 0}
    for i, (a, _, expected) in enumerate(DEDUP_PAIRS):
        hints = store.list(category=f"pair{i}")
        assert len(hints) == (1 if expected else 2), (i, [h.text for h in hints])
        if expected:  # the first one seen survives, carrying the evidence of both
            assert hints[0].text == a[1].rstrip(".")
            assert hints[0].support == 2 and hints[0].provenance.episode_ids == ["ep-a", "ep-b"]


def test_support_provenance_and_idempotent_reupsert(store: HintStore, tmp_path: Path) -> None:
    first = make_hint("WHEN a container is closed", "open it before putting anything in it", episode="ep-1")
    assert store.upsert([first], run_id="run-1")["added"] == 1
    snapshot = store.snapshot_id()
    assert store.upsert([first], run_id="run-1") == {"added": 0, "merged": 0, "unchanged": 1}
    assert store.get(first.hint_id).support == 1 and store.snapshot_id() == snapshot

    paraphrase = make_hint("WHEN the container is closed", "open it before you put anything in it", episode="ep-2")
    assert store.upsert([paraphrase], run_id="run-2") == {"added": 0, "merged": 1, "unchanged": 0}
    assert store.upsert([paraphrase], run_id="run-2")["unchanged"] == 1  # same episode, same run
    assert store.upsert([first], run_id="run-3")["merged"] == 1  # same episode, new run: cited, no support
    stored = store.get(first.hint_id)
    assert stored.support == 2
    assert stored.provenance.episode_ids == ["ep-1", "ep-2"]
    assert stored.provenance.run_ids == ["run-1", "run-2", "run-3"]
    assert stored.provenance.last_seen > first.provenance.last_seen
    assert store.count() == 1

    reopened = HintStore(HintsConfig(), tmp_path)  # a second client on the same folder
    assert reopened.get(first.hint_id) == stored


def test_retrieve_filters_category_k_and_status(store: HintStore) -> None:
    twc = [
        make_hint("WHEN a container is closed", "open it before putting anything in it"),
        make_hint("WHEN you hold clothes", "put them in the wardrobe"),
        make_hint("WHEN an object lies on the floor", "take it first"),
    ]
    coin = make_hint("WHEN a door is closed", "open the door before moving", category="coin")
    assert store.retrieve("twc", "anything", 3) == []  # empty store
    store.upsert([*twc, coin], run_id="run-1")

    got = store.retrieve("twc", "the fridge is closed and I hold an apple", 2)
    assert len(got) == 2 and {h.category for h in got} == {"twc"}
    assert got[0].hint_id == twc[0].hint_id  # closest by meaning
    assert store.retrieve("twc", "door", 0) == []
    assert [h.hint_id for h in store.retrieve("coin", "a closed container", 5)] == [coin.hint_id]
    assert store.retrieve("mapreader", "anything", 3) == []

    before = store.snapshot_id()
    store.set_status(twc[0].hint_id, "disabled")
    assert twc[0].hint_id not in {h.hint_id for h in store.retrieve("twc", "the fridge is closed", 5)}
    assert len(store.retrieve("twc", "the fridge is closed", 5)) == 2
    assert store.snapshot_id() != before
    assert [h.hint_id for h in store.list(status="disabled")] == [twc[0].hint_id]

    edited = store.update_text(twc[2].hint_id, "  pick it up   first. ")
    assert edited.text == "pick it up first" and store.get(twc[2].hint_id).text == "pick it up first"
    with pytest.raises(KeyError, match="h-missing"):
        store.get("h-missing")


def test_export_import_round_trip(store: HintStore, tmp_path: Path) -> None:
    store.import_jsonl(CURATED)
    store.upsert([make_hint("WHEN a door is closed", "open the door first", category="coin")], run_id="run-1")
    out = tmp_path / "export" / "hints.jsonl"
    assert store.export_jsonl(out) == store.count() == 6

    other = HintStore(HintsConfig(collection="other-hints"), tmp_path / "other")
    assert other.import_jsonl(out) == {"added": 6, "merged": 0, "unchanged": 0, "lines": 6}
    assert other.list() == store.list()
    assert other.snapshot_id() == store.snapshot_id() != "empty"
    assert other.import_jsonl(out)["unchanged"] == 6  # importing twice changes nothing


def test_bad_import_line_names_it_and_stores_nothing(store: HintStore, tmp_path: Path) -> None:
    good = CURATED.read_text().splitlines()
    bad = json.loads(good[1])
    bad["status"] = "maybe"
    path = tmp_path / "pack.jsonl"
    path.write_text("\n".join([good[0], "", json.dumps(bad), good[2]]) + "\n")
    with pytest.raises(ValueError, match=r"pack\.jsonl:3: not a valid Hint"):
        store.import_jsonl(path)
    path.write_text(good[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"pack\.jsonl:2"):
        store.import_jsonl(path)
    assert store.count() == 0 and store.snapshot_id() == "empty"


def test_parse_hints_accepts_rules_and_counts_rejections() -> None:
    raw = "\n".join(
        [
            "- WHEN a {container} is closed: open the {container} before putting anything in it.",
            "1. when you hold the {object}: put it in its usual {container}",
            "Always open containers first",  # no WHEN clause
            "WHEN something happens: the agent failed",  # description, not an instruction
            "WHEN x: " + "take everything " * 20,  # too long
            "WHEN a door is closed:",  # empty instruction
            "WHEN you are stuck: look around",
            "WHEN you are stuck again: look around",  # same instruction twice
            "WHEN the task is done: stop",
            "WHEN nothing else works: try another valid action",  # a fifth valid rule
        ]
    )
    pairs, reasons = parse_hints(raw, "twc", max_chars=120)
    assert pairs == [
        ("WHEN a {container} is closed", "open the {container} before putting anything in it"),
        ("WHEN you hold the {object}", "put it in its usual {container}"),
        ("WHEN you are stuck", "look around"),
        ("WHEN the task is done", "stop"),
    ]
    assert sorted(reasons) == sorted(
        ["no WHEN clause", "not imperative", "too long", "empty", "duplicate", "more than 4"]
    )
    assert parse_hints("", "twc", 120) == ([], ["empty"])


def test_curated_pack_passes_validation() -> None:
    lines = CURATED.read_text().splitlines()
    assert 3 <= len(lines) <= 5
    for line in lines:
        hint = Hint.model_validate_json(line)
        assert (hint.source, hint.category, hint.extractor) == ("curated", "twc", "human")
        assert hint.hint_id == Hint.make_id(hint.text, hint.category)
        pairs, reasons = parse_hints(f"{hint.applicability}: {hint.text}", "twc", HintsConfig().max_chars)
        assert pairs == [(hint.applicability, hint.text)] and reasons == []


def test_render_trajectory_keeps_last_steps() -> None:
    episode = failed_episode(0)
    episode.steps = [s.model_copy(update={"action": f"act {i}", "index": i}) for i, s in enumerate(episode.steps * 5)]
    text = render_trajectory(episode, last=10)
    assert text.startswith("(5 earlier steps omitted)") and "> act 14\nYou ran out of steps." in text
    assert "> act 4\n" not in text and text.count("> act") == 10
    short = render_trajectory(failed_episode(3), last=10)
    assert short.startswith("You are in the kitchen (game 3). The fridge is closed. Step 0.\n> look around\n")
    assert short.count("> look around") == 3


class ScriptedBackend:
    """A GenerationBackend that answers with fixed text, to drive DSPy's real adapters."""

    name = identity = "scripted"  # a named fake (no weights)
    model_path = adapter_path = None

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[list[Message]] = []

    def generate(self, prompts, params: SamplingParams, choices=None) -> list[Completion]:
        self.prompts += prompts
        return [Completion(texts=[self.answers.pop(0)], prompt_tokens=10, completion_tokens=[20]) for _ in prompts]

    def close(self) -> None:
        pass


def test_extract_and_store_with_scripted_lm(tmp_path: Path) -> None:
    answers = [
        "[[ ## hints ## ]]\nWHEN a {container} is closed: open it before putting anything in it\n"
        "The agent looped.\nWHEN you enter a new room: read where every object is before moving\n\n"
        "[[ ## completed ## ]]",
        "[[ ## hints ## ]]\nWHEN the {container} is closed: open it before you put anything in it.\n\n"
        "[[ ## completed ## ]]",
    ]
    backend = ScriptedBackend(answers)
    lm = make_extractor_lm(ExtractorConfig(), backend, "scripted-v1", cache_dir=tmp_path / "dspy")
    cfg = HintsConfig(curated_packs=[str(CURATED)], max_failures=2)
    store = HintStore(cfg, tmp_path)
    # task-1 twice: the extractor sees one failure per task first, so ep-1 and ep-2 (max_failures=2)
    episodes = [failed_episode(1), failed_episode(1).model_copy(update={"episode_id": "ep-1b"}), failed_episode(2)]
    result = extract_and_store(episodes, cfg, store, lm, f"scripted-v1+{PROMPT_VERSION}", "run-1")

    assert result.curated_imported == 5 and result.extracted == 3
    assert result.rejected == {"no WHEN clause": 1}
    # "open it before putting anything in it" exists in the curated pack: both extractions merge into it
    assert (result.added, result.merged) == (1, 2)
    assert result.active_hints == 6 and result.snapshot_id == store.snapshot_id()
    curated_open = store.get(Hint.make_id("open it before putting anything in it", "twc"))
    assert curated_open.source == "curated" and curated_open.support == 3
    assert curated_open.provenance.episode_ids == ["ep-1", "ep-2"]
    new = [h for h in store.list() if h.source == "extracted"]
    assert len(new) == 1 and new[0].extractor == f"scripted-v1+{PROMPT_VERSION}"
    assert new[0].provenance.run_ids == ["run-1"]
    assert "Tidy up the house" in backend.prompts[0][-1].content  # the task reached the LM


class RecordingBackend:
    """A real backend with a tap: records the prompts it is sent and the texts it answers (not a fake)."""

    def __init__(self, backend) -> None:
        self.backend, self.prompts, self.texts = backend, [], []
        self.name, self.identity = backend.name, backend.identity
        self.model_path, self.adapter_path = backend.model_path, backend.adapter_path
        self.constrains_json = getattr(backend, "constrains_json", False)

    def generate(self, prompts, params: SamplingParams, choices=None, schemas=None) -> list[Completion]:
        kwargs = {"schemas": schemas} if schemas else {}
        out = self.backend.generate(prompts, params, choices=choices, **kwargs)
        self.prompts += prompts
        self.texts += [c.texts[0] for c in out]
        return out

    def close(self) -> None:
        pass


def test_extract_with_tiny_model(tmp_path: Path, tiny_backend) -> None:
    backend = RecordingBackend(tiny_backend)
    lm = make_extractor_lm(ExtractorConfig(max_tokens=32), backend, "tiny-test", cache_dir=tmp_path / "dspy")
    failures = [failed_episode(i) for i in range(2)]
    success = SuccessReference(source="gold", task_id="task-0", same_task=True, actions=["open fridge", "take apple"],
                               replies=["The fridge is open.", "You take the apple."])  # fmt: skip
    hints, rejected = extract_hints(
        failures, lm, max_chars=200, extractor_id="tiny+hints", run_id="run-t", references={"ep-0": success}
    )
    # each failure reached the model, the first next to its success, the second alone
    prompts = ["\n".join(m.content for m in p) for p in backend.prompts]
    first = [p for p in prompts if "(game 0)" in p]
    second = [p for p in prompts if "(game 1)" in p]
    assert first and second and len(prompts) >= 2
    assert all("take apple" in p and "successful_trajectory" in p for p in first)
    assert not any("successful_trajectory" in p for p in second)
    # nothing is invented: every returned hint is a rule the model itself wrote
    written = {pair for text in backend.texts for pair in parse_hints(text, "twc", 200)[0]}
    assert {(h.applicability, h.text) for h in hints} <= written
    assert rejected.get("unparseable", 0) <= len(failures)
    for hint in hints:
        assert hint.provenance.run_ids == ["run-t"] and hint.source == "extracted"
        assert hint.extractor.endswith("+contrast") == (hint.provenance.episode_ids == ["ep-0"])


def test_constrained_local_extractor_always_writes_parseable_lines(tmp_path: Path, tiny_backend) -> None:
    """RESULTS 3.11: unconstrained, a weak model writes no `WHEN ...: ...` line; decoded to the lines schema
    (xgrammar), every reply parses, so what is left to judge is content (screen, uplift), not format."""
    failures = [failed_episode(i) for i in range(2)]
    outcomes = {}
    for constrain in (False, True):
        backend = RecordingBackend(tiny_backend)
        cfg = ExtractorConfig(max_tokens=120, constrain_format=constrain)
        lm = make_extractor_lm(cfg, backend, "tiny-lines", cache_dir=tmp_path / f"dspy-{constrain}")
        hints, rejected = extract_hints(failures, lm, max_chars=200, extractor_id="tiny", run_id="run-c")
        outcomes[constrain] = (hints, rejected, backend.texts)
    hints, rejected, texts = outcomes[True]
    assert texts and all(t.startswith('{"hints": ["WHEN ') for t in texts), texts  # decoded to the lines schema
    assert "no WHEN clause" not in rejected, rejected  # cut replies keep their complete lines
    _, loose_rejected, loose_texts = outcomes[False]
    assert not any("WHEN " in t for t in loose_texts), loose_texts  # the random model, unconstrained


def test_contrast_prompt_shows_both_trajectories_and_the_divergence(tmp_path: Path) -> None:
    failure = failed_episode(5)
    actions = ["look around", "take apple", "eat apple"]
    failure.steps = [s.model_copy(update={"action": a}) for s, a in zip(failure.steps, actions, strict=True)]
    success = SuccessReference(
        source="teacher",
        task_id="task-5",
        same_task=True,
        episode_id="ep-win",
        actions=["look around", "open fridge", "put apple in fridge"],
        replies=["You see a fridge.", "The fridge is open.", "Task complete."],
    )
    answers = [
        "[[ ## hints ## ]]\nWHEN a {container} is closed: open the {container} before anything else\n\n"
        "[[ ## completed ## ]]",
        "[[ ## hints ## ]]\nWHEN you are stuck: look around\n\n[[ ## completed ## ]]",
    ]
    backend = ScriptedBackend(answers)
    lm = make_extractor_lm(ExtractorConfig(), backend, "scripted-c", cache_dir=tmp_path / "dspy")
    cfg = HintsConfig(max_failures=2)
    store = HintStore(cfg, tmp_path)
    result = extract_and_store(
        [failure, failed_episode(6)], cfg, store, lm, "scripted/x", "run-1", references={failure.episode_id: success}
    )
    contrast, single = ("\n".join(m.content for m in p) for p in backend.prompts)
    assert 'At step 2 the failure did "take apple"; the success did "open fridge"' in contrast
    assert "Both first did: look around" in contrast
    assert "2. > take apple   <-- first difference" in contrast and "3. > eat apple" in contrast
    assert "2. > open fridge   <-- first difference" in contrast and "3. > put apple in fridge" in contrast
    assert "Task complete." in contrast and "successful_trajectory" in contrast
    assert "successful_trajectory" not in single and "(game 6)" in single
    assert (result.contrastive, result.references) == (1, {"teacher": 1})
    by_text = {h.text: h for h in store.list()}
    assert by_text["open the {container} before anything else"].extractor == "scripted/x+contrast"
    assert by_text["look around"].extractor == "scripted/x"

    # mode single: the same success is not shown
    single_cfg = cfg.model_copy(update={"extractor": ExtractorConfig(mode="single"), "collection": "single-test"})
    backend2 = ScriptedBackend(answers[1:])
    lm2 = make_extractor_lm(ExtractorConfig(), backend2, "scripted-s", cache_dir=tmp_path / "dspy2")
    out = extract_and_store([failure], single_cfg, HintStore(single_cfg, tmp_path), lm2, "s", "run-2",
                            references={failure.episode_id: success})  # fmt: skip
    assert out.contrastive == 0 and "open fridge" not in backend2.prompts[0][-1].content


def test_pick_success_prefers_the_same_task_then_a_similar_one() -> None:
    failure = failed_episode(1)
    win = failed_episode(1).model_copy(update={"episode_id": "w-long", "success": True})
    short = win.model_copy(update={"episode_id": "w-short", "steps": win.steps[:1]})
    other = failed_episode(2).model_copy(update={"episode_id": "w-other", "success": True})
    coin = failed_episode(3, category="coin").model_copy(update={"episode_id": "w-coin", "success": True})
    got = pick_success(failure, [("base", win), ("teacher", short), ("base", other)])
    assert (got.episode_id, got.source, got.same_task) == ("w-short", "teacher", True)
    assert pick_success(failure, [("base", other), ("base", coin)]) is None
    similar = pick_success(failure, [("base", other), ("base", coin)], similar=True)
    assert (similar.episode_id, similar.same_task) == ("w-other", False)
    assert similar.replies[-1] == "You ran out of steps." and similar.actions == ["look around"] * 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chroma_server_serves_same_results(tmp_path: Path) -> None:
    hints = [
        make_hint("WHEN a container is closed", "open it before putting anything in it"),
        make_hint("WHEN you hold clothes", "put them in the wardrobe"),
        make_hint("WHEN a door is closed", "open the door before moving", category="coin"),
    ]
    local = HintStore(HintsConfig(), tmp_path / "local")
    local.upsert(hints, run_id="run-1")

    port = _free_port()
    chroma = Path(sys.executable).parent / "chroma"
    log = (tmp_path / "chroma.log").open("w")
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"chroma server did not start: {(tmp_path / 'chroma.log').read_text()}"
                    ) from None
                time.sleep(0.2)
        remote = HintStore(HintsConfig(chroma_url=f"http://127.0.0.1:{port}"), tmp_path / "unused")
        remote.upsert(hints, run_id="run-1")
        query = "the fridge is closed"
        assert [h.hint_id for h in remote.retrieve("twc", query, 2)] == [
            h.hint_id for h in local.retrieve("twc", query, 2)
        ]
        assert remote.snapshot_id() == local.snapshot_id()
        reconnected = HintStore(HintsConfig(chroma_url=f"http://127.0.0.1:{port}"), tmp_path / "unused")
        assert reconnected.count() == 3
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_extraction_inputs_give_the_extractor_the_correct_actions(tmp_path: Path) -> None:
    """What the retrain flow hands the hints stage: the replayed gold path (real TextWorldExpress), a same-task
    teacher success from an earlier round before it, and the correct actions in single mode too."""
    cfg = load_config("test", {"data_dir": str(tmp_path / "data")})
    factory = make_environment(cfg.env)
    tasks = factory.tasks("train", 2)
    failures = [
        failed_episode(i).model_copy(update={"task_id": t.task_id, "seed": t.seed, "category": t.category})
        for i, t in enumerate(tasks)
    ]
    env = factory.make()
    try:
        env.reset(task_of(failures[0]))
        gold = list(env.gold_actions())
    finally:
        env.close()
    assert task_of(failures[0]) == tasks[0] and gold

    given = extraction_inputs(cfg, failures)
    assert set(given.references) == {"ep-0", "ep-1"} == set(given.gold_actions)
    ref = given.references["ep-0"]
    assert (ref.source, ref.same_task, ref.actions) == ("gold", True, gold) and given.gold_actions["ep-0"] == gold
    assert len(ref.replies) == len(gold) and ref.replies[-1]

    # a same-task success from an earlier teach stage comes first
    won = failures[1].model_copy(update={"episode_id": "t-win", "success": True, "steps": failures[1].steps[:1]})
    traj = Trajectory(trajectory_id="t-1", episode=won, hint_ids=[], hints_block="")
    ref = save_records([traj], cfg.data_path / "datasets", "trajectories", {})
    assert extraction_inputs(cfg, failures).references["ep-1"].source == "gold"  # only named rounds count
    again = extraction_inputs(cfg, failures, earlier_teach=(ref.hash,))
    assert (again.references["ep-1"].source, again.references["ep-1"].episode_id) == ("teacher", "t-win")
    assert again.references["ep-0"].source == "gold"

    # the stage shows the gold path: as the success (contrastive) or as the correct actions (single)
    answer = "[[ ## hints ## ]]\nWHEN you are stuck: look around\n\n[[ ## completed ## ]]"
    for mode in ("contrastive", "single"):
        backend = ScriptedBackend([answer])
        lm = make_extractor_lm(ExtractorConfig(), backend, f"scripted-{mode}", cache_dir=tmp_path / mode)
        hints_cfg = HintsConfig(max_failures=1, collection=f"gold-{mode}", extractor=ExtractorConfig(mode=mode))
        store = HintStore(hints_cfg, tmp_path / mode)
        out = extract_and_store(failures[:1], hints_cfg, store, lm, "s", "run-1", given.gold_actions, given.references)
        prompt = backend.prompts[0][-1].content
        assert out.gold_given == 1 and (out.contrastive, out.references) == (
            (1, {"gold": 1}) if mode == "contrastive" else (0, {})
        )
        if mode == "single":
            assert "A correct action sequence: " + ", ".join(gold) in prompt
        else:
            assert all(f"> {a}" in prompt for a in gold[:3]) and "first difference" in prompt
