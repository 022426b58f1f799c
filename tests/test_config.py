import pytest

from r2w.config import ConfigError, load_config


def test_bundled_configs_validate():
    demo = load_config("demo")
    test = load_config("test")
    assert demo.models.base == "smollm2" and test.models.base == "tiny"
    assert demo.hash != test.hash


@pytest.mark.parametrize("name", ["demo", "test", "arithmetic", "peckingorder", "tidy6"])
def test_every_shipped_config_validates_and_names_its_own_data_dir(name):
    cfg = load_config(name)
    assert cfg.name == name
    # experiment configs must not share a data dir with the demo (their runs would mix)
    assert name in ("demo", "test") or str(cfg.data_dir) not in (".r2w", "")


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teach: {samples: 4, sampels: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "teach.sampels" in str(err.value)


def test_wrong_type_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect: {episodes: many}\n")
    with pytest.raises(ConfigError, match=r"collect\.episodes.*'many'"):
        load_config(bad)


def test_overrides_apply_and_validate():
    cfg = load_config("test", {"teach.samples": 7})
    assert cfg.teach.samples == 7
    with pytest.raises(ConfigError, match="teach.samples"):
        load_config("test", {"teach.samples": 0})


def test_missing_config_lists_bundled():
    with pytest.raises(ConfigError, match="bundled"):
        load_config("no-such-config")


def test_replay_families_must_not_be_what_the_gate_measures_or_trains():
    replay = {"distill.replay.examples": 8}
    with pytest.raises(ConfigError, match=r"distill.replay.families.*leg_counting.*retention"):
        load_config("test", {**replay, "distill.replay.families": ["leg_counting"]})
    with pytest.raises(ConfigError, match=r"distill.replay.families: \['basic_arithmetic'\] are the trained"):
        load_config("arithmetic", {**replay, "distill.replay.families": ["basic_arithmetic"]})
    with pytest.raises(ConfigError, match="needs distill.replay.families"):
        load_config("test", replay)
    with pytest.raises(ConfigError, match="replay rows are SFT targets"):
        load_config("test", {**replay, "distill.replay.families": ["letter_counting"], "distill.method": "dpo"})
    cfg = load_config("test", {**replay, "distill.replay.families": ["letter_counting"]})
    assert cfg.distill.replay.examples == 8


def test_score_selection_needs_a_backend_that_exposes_logits():
    with pytest.raises(ConfigError, match="action_selection=score .* models.backend=transformers, got 'auto'"):
        load_config("tidy6", {"agent.action_selection": "score"})
    assert load_config("test", {"agent.action_selection": "score"}).agent.action_selection == "score"


@pytest.mark.parametrize("field", ["evaluate.general_text", "models.base", "hints.curated_packs"])
def test_a_secret_in_a_path_field_is_scrubbed_from_the_missing_path_error(field):
    """Found by the config fuzz: the 'no such path' error quoted the value (and the paths tried) as written."""
    secret = "sk-planted9F3kQ7zLw2Xc5Vb8Nm1"
    value = [f"key {secret}"] if field == "hints.curated_packs" else f"key {secret}"
    with pytest.raises(ConfigError, match="no such path") as err:
        load_config("demo", {field: value})
    assert secret not in str(err.value) and field.split(".")[1] in str(err.value)
