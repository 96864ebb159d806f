"""House rules checked on the tests themselves: every test that starts a subprocess is marked
``slow`` (so ``pytest -m "not slow"`` is the fast loop)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
SPAWNS = ("run_cli", "subprocess", "Popen", "multirun")


def _is_slow_mark(node: ast.expr) -> bool:
    return "mark.slow" in ast.unparse(node)


def _spawning_helpers(tree: ast.Module) -> set[str]:
    """Module-level helper functions that start subprocesses (called by tests)."""
    return {f.name for f in tree.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("test_")
            and any(s in ast.unparse(f) for s in SPAWNS)}


def unmarked_spawning_tests() -> list[str]:
    out = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text())
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                          and _is_slow_mark(n.value) for n in tree.body)
        helpers = _spawning_helpers(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            body = ast.unparse(node)
            calls = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            spawns = any(s in body for s in SPAWNS) or bool(calls & helpers)
            if spawns and not module_slow and not any(_is_slow_mark(d) for d in node.decorator_list):
                out.append(f"{path.relative_to(TESTS)}::{node.name}")
    return out


def test_every_test_that_starts_a_subprocess_is_marked_slow():
    assert unmarked_spawning_tests() == []
