from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "status", "models", "hints", "promote", "rollback"):
        assert command in result.output


def test_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate: {max_kl: lots}\n")
    result = runner.invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2
    assert "gate.max_kl" in result.output and "bad.yaml" in result.output


def test_bad_override_exits_2():
    result = runner.invoke(app, ["run", "--config", "test", "--set", "teach.samples"])
    assert result.exit_code == 2 and "expected key=value" in result.output
