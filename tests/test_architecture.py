"""Rules about the code, kept by tests (docs/architecture.md): the planes and their one-way
imports, no import cycles, no analysis library in a serving process, one writer of the live
snapshot."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "router"

# Each plane, and the planes it must never import. Leaf modules (router/*.py outside the
# subpackages, and config/) may be imported by every plane.
FORBIDDEN = {
    "dataplane": {"observers", "control", "process", "analysis", "demo"},
    "observers": {"control", "process", "analysis", "demo"},
    "control": {"process", "analysis", "demo"},
    "analysis": {"dataplane", "observers", "control", "process", "demo"},
    "config": {"dataplane", "observers", "control", "process", "analysis", "demo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(text: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Modules of ``router`` that the source of ``module`` imports at run time, anywhere in
    the file (lazy imports inside functions count; ``if TYPE_CHECKING:`` blocks do not)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    tree = ast.parse(text)
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and _type_checking(node) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "router":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "router":
                target = node.module
            else:
                continue
            for alias in node.names:  # a module (from . import x) or a name in one:
                yield f"{target}.{alias.name}"  # graph() trims names to their module


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        text = path.read_text(encoding="utf-8")
        for target in runtime_imports(text, name, path.name == "__init__.py"):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            # importing a.b.c runs the packages a.b and a first: their __init__ are edges too
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):
                step = ".".join(parts[:depth])
                if step in modules and step != name and not name.startswith(step + "."):
                    targets.add(step)
        edges[name] = targets
    return edges


def plane(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and
                                          (PACKAGE / parts[1]).is_dir()) else None


def test_planes_import_one_way() -> None:
    wrong = sorted(f"{source} imports {target}" for source, targets in graph().items()
                   for target in targets
                   if plane(target) in FORBIDDEN.get(plane(source) or "", set()))
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # depth-first search; a back edge is a cycle
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_checker_sees_lazy_imports_and_skips_type_checking() -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    from ..analysis import report\n"
              "def f():\n    from ..control import reload\n")
    assert list(runtime_imports(source, "router.dataplane.mod")) == ["router.control.reload"]


def test_one_place_assigns_the_live_snapshot() -> None:
    writers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Attribute) and t.attr == "snapshot"
                    and isinstance(t.value, ast.Attribute) and t.value.attr == "live"
                    for t in node.targets):
                writers.append(module_name(path))
    assert set(writers) == {"router.control.reload"}


@pytest.mark.parametrize("module", ["router.process.app", "router.cli"])
def test_a_serving_process_loads_no_analysis_library(module: str) -> None:
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in ('scipy', 'duckdb') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == ""
