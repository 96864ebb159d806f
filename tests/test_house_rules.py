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


#: the rooms of tlexp, lowest first (the README's development section); a module may import its
#: own room and rooms ranked below it, lazily inside a function too, never one at its rank or above
RANKS = {
    "errors": 0, "_resources": 1, "_tempfiles": 1, "config": 1, "graph": 1, "data": 2, "sources": 3,
    "surgery": 4, "freeze": 4, "finetune": 4, "featurize": 5, "module": 5, "callbacks": 5, "output_check": 5,
    "_report": 5, "assemble": 6, "baselines": 7, "phases": 8, "train": 9, "sweep": 10, "inspect": 10,
    "helper": 10, "_choices": 10, "cli": 11, "__init__": 11,
}


def upward_imports() -> list[str]:
    package = TESTS.parent / "tlexp"
    out = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        room = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "tlexp":
                    targets = [a.name for a in node.names]
                elif node.module.startswith("tlexp."):
                    targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("tlexp.")]
            for target in targets:
                if target != room and RANKS.get(target, 99) >= RANKS.get(room, -1):
                    out.append(f"{'/'.join(parts)}:{node.lineno} imports tlexp.{target}")
    return out


def test_rooms_import_only_rooms_below_them():
    package = TESTS.parent / "tlexp"
    rooms = {p.stem if p.is_file() else p.name for p in package.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert rooms - {"conf"} <= set(RANKS), f"rank the new room(s): {sorted(rooms - {'conf'} - set(RANKS))}"
    assert upward_imports() == []


def test_a_config_node_becomes_plain_data_in_one_place():
    """tlexp.config.plain is the one conversion of config nodes the run path uses (assemble,
    surgery, finetune, sources and phases once each had their own)."""
    package = TESTS.parent / "tlexp"
    users = ["assemble.py", "finetune/_settings.py", "surgery/_registry.py", "sources/__init__.py", "phases.py",
             "train.py", "inspect.py", "module.py", "baselines.py"]
    own = [f"{name}:{node.lineno}" for name in users for node in ast.walk(ast.parse((package / name).read_text()))
           if isinstance(node, ast.Attribute) and node.attr == "to_container"]
    assert own == []
    from omegaconf import OmegaConf

    from tlexp.assemble import plain as from_assemble
    from tlexp.config import plain

    assert from_assemble is plain
    node = OmegaConf.create({"a": 1, "b": "${a}", "c": [{"d": "${a}"}]})
    assert plain(node) == {"a": 1, "b": 1, "c": [{"d": 1}]} and plain([1]) == [1]


#: names a reader stops at (the issue's examples, and the ones spelled out since)
SHORT_NAMES = {"Ctx", "ctx", "KLayer", "CL", "CF", "cfg2", "_G", "_mln", "_cg", "_nf", "_pid", "dl4j_act"}


def short_names() -> list[str]:
    """Module-level names, classes, functions and parameters in tlexp/ and hydra_plugins/ that are
    one letter (TypeVars aside) or in SHORT_NAMES. The Keras importer's ``ctx`` (a
    ``BuildTarget``) is that room's own word and stays."""
    root = TESTS.parent
    found = []
    for path in [*sorted((root / "tlexp").rglob("*.py")), *sorted((root / "hydra_plugins").rglob("*.py"))]:
        rel = path.relative_to(root).as_posix()
        allowed = {"ctx"} if rel.startswith("tlexp/sources/keras/") else set()
        tree = ast.parse(path.read_text())
        names: list[tuple[int, str]] = []
        for node in tree.body:
            if isinstance(node, ast.Assign) and not (isinstance(node.value, ast.Call)
                                                     and getattr(node.value.func, "id", "") == "TypeVar"):
                names += [(node.lineno, t.id) for t in node.targets if isinstance(t, ast.Name)]
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append((node.lineno, node.name))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names += [(a.lineno, a.arg) for a in [*node.args.args, *node.args.kwonlyargs] if a.arg in SHORT_NAMES]
        found += [f"{rel}:{lineno}: {name}" for lineno, name in names
                  if name not in allowed and (name in SHORT_NAMES or len(name.strip("_")) <= 1)]
    return found


def test_no_short_names_where_a_reader_would_stop():
    assert short_names() == []
