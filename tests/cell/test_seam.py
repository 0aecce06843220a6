"""The cell's parts meet at public interfaces: no reaching into another object's privates,
no import cycle between its modules, no module past 500 lines.

The checks are plain functions over source text, so other packages can be
added to `PACKAGES` once they keep the same rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PACKAGES = {"fl_core.cell": REPO / "core" / "cell"}
"""Import name -> folder of each package held to these rules."""

MAX_LINES = 500


def private_reaches(source: str, filename: str = "<source>") -> list[str]:
    """Every place `source` touches a private name of something other than itself.

    A private name is `_x` (not a dunder). Allowed: `self._x`, `cls._x` and
    `super()._x`, since a class may use its own members. Flagged: `obj._x`
    for any other `obj` (`cell._route`, `self._cell._on_frame`), and
    `from module import _x`.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if (
                isinstance(owner, ast.Call)
                and isinstance(owner.func, ast.Name)
                and owner.func.id == "super"
            ):
                continue
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_imports(source: str, package: str, modules: set[str]) -> set[str]:
    """The modules of `package` (short names in `modules`) that `source` imports when loaded.

    Only imports that run at import time count: those at module level, in
    top-level `try` and `if` blocks, but not under `if TYPE_CHECKING:` and
    not inside functions.
    """
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(_short(alias.name, package, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(_short(node.module, package, modules))
                if node.module == package:  # `from package import module`
                    found.update(a.name for a in node.names if a.name in modules)

    visit(ast.parse(source).body)
    found.discard("")
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _short(module: str, package: str, modules: set[str]) -> str:
    if not module.startswith(package + "."):
        return ""
    name = module.removeprefix(package + ".").split(".")[0]
    return name if name in modules else ""


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (module -> modules it imports) as a path, or []."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(name: str) -> list[str]:
        if name in on_path:
            return [*path[path.index(name) :], name]
        if name in done:
            return []
        path.append(name)
        on_path.add(name)
        for target in sorted(graph.get(name, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        on_path.discard(name)
        done.add(name)
        return []

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return []


def _sources(folder: Path) -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(folder.glob("*.py"))}


# --- the checks themselves can fail ----------------------------------------------------


def test_the_scan_flags_a_reach_into_another_objects_privates() -> None:
    source = """
class Part:
    def __init__(self, cell):
        self._cell = cell
        self._cell._on_frame(1)
        cell._route("x")
        super()._setup()
        cls_name = type(self).__name__
        self._own()
from fl_core.cell.cell import _HELLO
"""
    found = private_reaches(source, "part.py")
    assert found == [
        "part.py:5: self._cell._on_frame",
        "part.py:6: cell._route",
        "part.py:10: from fl_core.cell.cell import _HELLO",
    ]


def test_the_import_scan_skips_type_checking_and_function_imports() -> None:
    modules = {"cell", "links", "parent"}
    source = """
from typing import TYPE_CHECKING
from fl_core.cell.links import Links
from fl_core.cell import parent
import fl_core.cell.message
if TYPE_CHECKING:
    from fl_core.cell.cell import Cell
def later():
    from fl_core.cell.cell import Cell
"""
    assert module_imports(source, "fl_core.cell", modules) == {"links", "parent"}


def test_the_cycle_search_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


# --- the rules ---------------------------------------------------------------------


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_reaches_into_another_objects_private_members(package: str) -> None:
    found = []
    for name, source in _sources(PACKAGES[package]).items():
        found += private_reaches(source, f"{package}.{name}")
    assert found == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle_between_the_modules(package: str) -> None:
    sources = _sources(PACKAGES[package])
    modules = set(sources)
    graph = {name: module_imports(src, package, modules) for name, src in sources.items()}
    assert find_cycle(graph) == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_is_longer_than_the_limit(package: str) -> None:
    long = {
        name: lines
        for name, source in _sources(PACKAGES[package]).items()
        if (lines := len(source.splitlines())) > MAX_LINES
    }
    assert long == {}
