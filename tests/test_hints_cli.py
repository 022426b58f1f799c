"""`r2w hints ...` curation through the real CLI (typer's CliRunner) on a temp data dir."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from r2w.config import HintsConfig
from r2w.contracts import Hint
from r2w.hintstore import HintStore

CURATED = Path(__file__).resolve().parent.parent / "configs" / "hints" / "twc_curated.jsonl"
runner = CliRunner()


def r2w(data_dir: Path, *args: str, code: int = 0) -> str:
    args_ = ["hints", *args, "--config", "test", "--set", f"data_dir={data_dir}"]
    result = runner.invoke(app, args_, env={"COLUMNS": "300"})  # rich would truncate ids in a narrow table
    assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
    return " ".join(result.output.split())  # rich wraps long lines


def test_curation_commands_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "imported" in r2w(data, "import", str(CURATED), "--label", "curated")
    store_cfg = HintsConfig(collection="r2w-hints-test")  # configs/test.yaml's collection
    hints = HintStore(store_cfg, data).list()
    assert len(hints) == 5
    target = next(h for h in hints if "open" in h.text)
    listed = r2w(data, "list", "--category", "twc")
    assert all(h.hint_id in listed for h in hints)

    shown = r2w(data, "show", target.hint_id)
    assert target.hint_id in shown and '"status": "active"' in shown
    assert "no hint" in r2w(data, "show", "h-missing", code=2)

    query = "The fridge is closed and you hold an apple."
    assert target.hint_id in {h.hint_id for h in HintStore(store_cfg, data).retrieve("twc", query, 5)}
    r2w(data, "disable", target.hint_id)
    store = HintStore(store_cfg, data)
    assert target.hint_id not in {h.hint_id for h in store.retrieve("twc", query, 5)}
    assert len(store.retrieve("twc", query, 5)) == 4
    assert [h.hint_id for h in store.list(status="disabled")] == [target.hint_id]
    assert target.hint_id not in r2w(data, "list", "--status", "active")
    r2w(data, "enable", target.hint_id)
    assert target.hint_id in {h.hint_id for h in HintStore(store_cfg, data).retrieve("twc", query, 5)}
    assert "no hint" in r2w(data, "disable", "h-missing", code=2)

    r2w(data, "edit", target.hint_id, "--text", "open the {container} first.", "--when", "WHEN a {container} is shut")
    edited = HintStore(store_cfg, data).get(target.hint_id)  # the id stays
    assert (edited.text, edited.applicability) == ("open the {container} first", "WHEN a {container} is shut")
    assert edited.updated_at > target.updated_at and edited.provenance == target.provenance
    assert "empty" in r2w(data, "edit", target.hint_id, "--text", "  ", code=2)

    out = tmp_path / "export.jsonl"
    assert "exported 5 hints" in r2w(data, "export", str(out))
    fresh = tmp_path / "fresh"
    assert "'added': 5" in r2w(fresh, "import", str(out))
    assert HintStore(store_cfg, fresh).list() == HintStore(store_cfg, data).list()
    assert HintStore(store_cfg, fresh).snapshot_id() == HintStore(store_cfg, data).snapshot_id()


def test_bad_import_exits_2_naming_the_line(tmp_path: Path) -> None:
    lines = CURATED.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["category"] = 7
    pack = tmp_path / "pack.jsonl"
    pack.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    output = r2w(tmp_path / "data", "import", str(pack), code=2)
    assert "pack.jsonl:2: not a valid Hint" in output and "category" in output
    assert HintStore(HintsConfig(collection="r2w-hints-test"), tmp_path / "data").count() == 0
    assert "missing.jsonl" in r2w(tmp_path / "data", "import", str(tmp_path / "missing.jsonl"), code=2)
    assert "data_dir" not in r2w(tmp_path / "data", "list")  # a valid --set is accepted silently
    result = runner.invoke(app, ["hints", "list", "--config", "test", "--set", "hints.k=-1"])
    assert result.exit_code == 2 and "hints.k" in result.output


def test_hint_make_id_is_what_the_cli_shows(tmp_path: Path) -> None:
    """Edit keeps the id even though the id is derived from the original text."""
    data = tmp_path / "data"
    r2w(data, "import", str(CURATED))
    first = Hint.model_validate_json(CURATED.read_text().splitlines()[0])
    r2w(data, "edit", first.hint_id, "--text", "look around before anything else")
    stored = HintStore(HintsConfig(collection="r2w-hints-test"), data).get(first.hint_id)
    assert stored.hint_id == first.hint_id != Hint.make_id(stored.text, stored.category)
