"""Registry safety: no code path sets `champion` except the human commands `r2w promote` / `r2w rollback`.

Static: every alias write in the code base is found by AST and its alias resolved; one that is (or may
be) `champion` must sit in promote_version / rollback_champion, and those are called only by the
CLI's promote / rollback commands. Dynamic: a full pipeline run leaves no `champion`.
"""

from __future__ import annotations

import ast

from robust_helpers import REPO

SOURCES = ("r2w", "tasks", "flows", "evaluation", "prompts", "scripts")
ALIAS_WRITES = {"set_registered_model_alias", "delete_registered_model_alias"}
STAGE_WRITES = {"transition_model_version_stage"}  # MLflow's legacy "Production" stage: never used
HUMAN = {("r2w/registry.py", "promote_version"), ("r2w/registry.py", "rollback_champion")}
REGISTRY = "r2w/registry.py"  # alias names live there; other modules import them
HUMAN_CALLERS = {("flows/cli.py", "promote"), ("flows/cli.py", "rollback")}


def _constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return out


def _alias(call: ast.Call, constants: dict[str, str]) -> str:
    node = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "alias"), None)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return "<unknown>"


def scan(
    path: str, source: str, shared: dict[str, str] | None = None
) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str, int]]]:
    """(alias writes as (file, function, alias, line), calls of the human functions as (file, function, line)).

    `shared`: constants importable from the registry module (CHALLENGER, CHAMPION)."""
    tree = ast.parse(source)
    constants = {**(shared or {}), **_constants(tree)}
    writes, human_calls = [], []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            if isinstance(child, ast.Call):
                fn = child.func
                name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if name in ALIAS_WRITES:
                    writes.append((path, where, _alias(child, constants), child.lineno))
                elif name in STAGE_WRITES:
                    writes.append((path, where, "<stage>", child.lineno))
                elif name in {"promote_version", "rollback_champion"}:
                    human_calls.append((path, where, child.lineno))
            visit(child, inner)

    visit(tree, "<module>")
    return writes, human_calls


def offending(files: dict[str, str]) -> list[str]:
    problems = []
    shared = _constants(ast.parse(files[REGISTRY])) if REGISTRY in files else {}
    for path, source in files.items():
        writes, calls = scan(path, source, shared)
        for file, function, alias, line in writes:
            if alias != "challenger" and (file, function) not in HUMAN:
                problems.append(f"{file}:{line} {function} writes alias {alias}")
        for file, function, line in calls:
            if (file, function) not in HUMAN_CALLERS and not file.startswith("tests/"):
                problems.append(f"{file}:{line} {function} calls a human-only registry command")
    return problems


def _code_base() -> dict[str, str]:
    files = {}
    for folder in SOURCES:
        for path in (REPO / folder).rglob("*.py"):
            files[str(path.relative_to(REPO))] = path.read_text()
    return files


def test_no_code_path_sets_champion_without_a_person():
    files = _code_base()
    assert REGISTRY in files and "tasks/register.py" in files and "flows/cli.py" in files
    assert offending(files) == []
    shared = _constants(ast.parse(files[REGISTRY]))
    writes = [w for path, source in files.items() for w in scan(path, source, shared)[0]]
    assert {(f, fn) for f, fn, alias, _ in writes if alias == "champion"} == HUMAN  # the scan sees the real ones


def test_the_scan_catches_a_planted_champion_write():
    planted = {
        "tasks/auto.py": (
            'CHAMP = "champion"\n'
            "def promote_if_good(client, name, v):\n"
            "    client.set_registered_model_alias(name, CHAMP, v)\n"
            "def sneaky(client, name, v, alias):\n"
            "    client.set_registered_model_alias(name=name, alias=alias, version=v)\n"
            "def legacy(client, name, v):\n"
            "    client.transition_model_version_stage(name, v, 'Production')\n"
        ),
        "flows/nightly.py": (
            "from tasks.register import promote_version\ndef job(cfg):\n    promote_version(cfg, '1', 'bot', 'x')\n"
        ),
    }
    problems = offending(planted)
    assert len(problems) == 4, problems
    assert any("promote_if_good writes alias champion" in p for p in problems)
    assert any("sneaky writes alias <unknown>" in p for p in problems)
    assert any("legacy writes alias <stage>" in p for p in problems)
    assert any("job calls a human-only" in p for p in problems)


def test_a_full_run_sets_no_champion(robust_run):
    from r2w.config import load_config
    from r2w.tracking import client_for

    summary, config, _, _ = robust_run
    cfg = load_config(str(config))
    client = client_for(cfg)
    assert summary.registered_version == "1", summary.reasons
    aliases = client.get_registered_model(cfg.registry.model_name).aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"challenger": "1"}
    version = client.get_model_version(cfg.registry.model_name, "1")
    assert version.tags["r2w.registration"] == "complete" and "r2w.promoted_by" not in version.tags
