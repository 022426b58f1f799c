"""The layer order r2w <- prompts <- evaluation <- tasks <- flows, and imports a reader can see.

Two independent checks: import-linter's layers contract (pyproject.toml) and an AST scan that
also sees imports inside functions. Both must pass on the tree and fail on a planted upward import.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["r2w", "prompts", "evaluation", "tasks", "flows"]
# The one import-order rule (r2w/runtime.py): entry points configure the environment before they import
# modules that pull in prefect, mlflow, dspy or huggingface_hub, which read their settings at import.
# The benchmarks keep it in one place (evaluation/benchmarks/common.py) and import project modules at the top.
ENTRY_POINTS = ("flows/cli.py",)
# Modules that need an optional extra (vLLM: `pip install 'r2w[vllm]'`) are imported only when chosen.
OPTIONAL_EXTRAS = ("r2w.backends.vllm_choice",)


def scan(root: Path) -> tuple[list[str], list[str]]:
    """(upward imports, function-local imports of project modules outside entry points), as 'file:line -> module'."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward, local = [], []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            in_function = {
                id(node)
                for fn in ast.walk(tree)
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                for node in ast.walk(fn)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in rank:
                        continue
                    where = f"{rel}:{node.lineno} -> {module}"
                    if rank[top] > rank[layer]:
                        upward.append(where)
                    if id(node) in in_function and not rel.startswith(ENTRY_POINTS) and module not in OPTIONAL_EXTRAS:
                        local.append(where)
    return upward, local


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tree_keeps_the_layer_order():
    upward, _ = scan(REPO)
    assert upward == []
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-2000:]


def test_no_hidden_function_local_imports_of_project_modules():
    _, local = scan(REPO)
    assert local == []


def test_a_planted_upward_import_is_caught(tmp_path):
    for layer in LAYERS:
        shutil.copytree(REPO / layer, tmp_path / layer, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "r2w" / "planted.py").write_text("def f():\n    from tasks.collect import collect_failures\n")
    upward, local = scan(tmp_path)
    assert upward == ["r2w/planted.py:2 -> tasks.collect"] and "r2w/planted.py:2 -> tasks.collect" in local
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "r2w.planted -> tasks.collect" in result.stdout
