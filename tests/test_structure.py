"""The layout is the architecture: imports point one way, modules and functions stay small.

The import graph is read from the source (``ast``), not by importing, so a cycle that
Python would survive (a deferred import, a ``TYPE_CHECKING`` block) still counts:

* ``kernels`` imports nothing of ours; ``neuralnum`` imports ``kernels`` only;
  ``structured`` imports ``kernels`` and ``neuralnum``; ``studies`` may import them all;
* inside ``neuralnum`` the layers point down: ``core`` → ``problems`` → ``models`` →
  ``training`` → ``solvers`` → the front door (the top-level modules);
* no cycle among our modules;
* an import inside a function is allowed only for an optional dependency, with a comment
  saying so on its line or the line above (``optional``);
* ``neuralnum``'s top level holds at most 6 modules; no function is longer than 60 lines
  and no class longer than 250 (docstrings included).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "neuralnum", "structured", "studies")
#: Which of our packages each package may import.
ALLOWED = {"kernels": {"kernels"}, "neuralnum": {"kernels", "neuralnum"},
           "structured": {"kernels", "neuralnum", "structured"}, "studies": set(PACKAGES)}
LAYERS = ("core", "problems", "models", "training", "solvers")
MAX_FUNCTION, MAX_CLASS = 60, 250


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _resolve(module: str, name: str | None) -> str | None:
    """The module of ours an import names (``from a import b`` → ``a.b`` if that is a
    module), or None for a third-party one."""
    if module.split(".")[0] not in PACKAGES:
        return None
    if name is not None and f"{module}.{name}" in SOURCES:
        return f"{module}.{name}"
    return module


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, str | None, bool]]:
    """``(node, module of ours or None, deferred)`` for every import statement."""
    found = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((child, _resolve(a.name, None), deferred) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.extend((child, _resolve(child.module, a.name), deferred)
                             for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


TREES = {name: ast.parse(path.read_text()) for name, path in SOURCES.items()}
EDGES = {name: {target for _, target, _ in _imports(tree) if target and target != name}
         for name, tree in TREES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_packages_import_only_what_they_may():
    bad = [f"{a} imports {b}" for a, targets in EDGES.items() for b in targets
           if b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not bad, bad


def test_neuralnum_layers_point_down():
    bad = [f"{a} imports {b}" for a, targets in EDGES.items() if a.startswith("neuralnum")
           for b in targets if b.startswith("neuralnum") and _layer(b) > _layer(a)]
    assert not bad, bad


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(EDGES.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [target]
            if target not in state and (cycle := walk(target, [*path, target])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(EDGES):
        if module not in state:
            cycle = walk(module, [module])
            assert cycle is None, " -> ".join(cycle)


def test_deferred_imports_are_optional_dependencies_said_so():
    bad = []
    for name, tree in TREES.items():
        lines = SOURCES[name].read_text().splitlines()
        for node, _, deferred in _imports(tree):
            said = " ".join(lines[max(node.lineno - 2, 0):node.lineno])
            if deferred and "optional" not in said:
                bad.append(f"{name}:{node.lineno}")
    assert not bad, bad


def test_a_lower_layer_loads_without_the_layers_above():
    """``import neuralnum.core.validation`` (as ``structured`` does) runs the package's
    ``__init__``, which loads its public names only on first use; every one of them
    resolves."""
    code = ("import sys, neuralnum.core.validation\n"
            "print(sorted(m for m in sys.modules if m.startswith('neuralnum.')))\n"
            "import neuralnum\n"
            "print(all(getattr(neuralnum, name) is not None for name in neuralnum.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split("\n")
    assert out[0] == "['neuralnum.core', 'neuralnum.core.validation']"
    assert out[1] == "True"


def test_neuralnum_top_level_holds_the_front_door_only():
    modules = sorted(p.name for p in (ROOT / "neuralnum").glob("*.py"))
    assert len(modules) <= 6, modules


@pytest.mark.parametrize("kind, limit", [(ast.FunctionDef, MAX_FUNCTION),
                                         (ast.ClassDef, MAX_CLASS)])
def test_functions_and_classes_stay_small(kind, limit):
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in TREES.items() for node in ast.walk(tree)
            if isinstance(node, kind) and node.end_lineno - node.lineno + 1 > limit]
    assert not long, long


def test_the_walker_sees_a_planted_cycle_and_a_deferred_import():
    """Plant: ``a`` imports ``b`` at the top, ``b`` imports ``a`` inside a function."""
    a = ast.parse("from neuralnum.core import flags\n")
    b = ast.parse("def f():\n    import neuralnum.core.runtime\n")
    assert [(t, d) for _, t, d in _imports(a)] == [("neuralnum.core.flags", False)]
    assert [(t, d) for _, t, d in _imports(b)] == [("neuralnum.core.runtime", True)]
    assert _layer("neuralnum.solvers.learner") > _layer("neuralnum.training.fit")
