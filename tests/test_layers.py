"""The composition rule and the layers, checked on the source.

- Only the composition roots touch containers or the plugin manager: the
  process entry modules (`fl_core.processes`), the command line
  (`fl_core.cli`), the training process's `flare.init()` (which asks
  `fl_core.containers.trainer` for its pipe), and the testing kit for plugin
  authors. Roles are handed their collaborators.
- No import cycle between any two modules of fl_core and fl_plugins.
- No module of core/ or plugins/ over 500 lines.
- No role reaches into another object's private members.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"fl_core": REPO / "core", "fl_plugins": REPO / "plugins"}
MAX_LINES = 500
GENERATED = {"fl_core.serialization.cell_pb2"}  # protoc's output, checked elsewhere

COMPOSITION_ROOTS = (
    "fl_core.containers",
    "fl_core.processes",
    "fl_core.cli",
    "fl_core.testing",
    "fl_core.client.pipe_session",  # flare.init(): the training process's root
    "fl_core.plugins",
)
"""Modules allowed to import containers or build a plugin manager."""


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            if "build" in path.relative_to(folder).parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([top, *parts])] = path
    return found


MODULES = _modules()


def _imports(tree: ast.AST, module: str, *, load_time_only: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module or name) of every import; only load-time ones if asked."""

    def walk(node: ast.AST, top_level: bool) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                if not load_time_only:
                    yield from walk(child, top_level)
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if not load_time_only:
                    yield from walk(child, False)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.rsplit(".", child.level)[0]
                    base = f"{package}.{base}" if base else package
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    yield child.lineno, full if full in MODULES else base
            else:
                yield from walk(child, top_level)

    yield from walk(tree, True)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_only_composition_roots_touch_containers_or_the_plugin_manager() -> None:
    bad = []
    for module, path in MODULES.items():
        if _under(module, COMPOSITION_ROOTS):
            continue
        tree = ast.parse(path.read_text())
        for line, name in _imports(tree, module, load_time_only=False):
            if _under(name, ("fl_core.containers", "fl_core.processes", "fl_core.cli")):
                bad.append(f"{path}:{line}: imports {name}")
            if name in ("fl_core.plugins", "fl_core.plugins.make_plugin_manager"):
                bad.append(f"{path}:{line}: imports the plugin manager ({name})")
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "make_plugin_manager":
                bad.append(f"{path}:{node.lineno}: calls make_plugin_manager")
    assert bad == []


def test_no_role_imports_a_container() -> None:
    roles = [m for m in MODULES if m.startswith("fl_core.roles.")]
    assert len(roles) > 20  # the scan sees the roles
    for module in roles:
        tree = ast.parse(MODULES[module].read_text())
        for line, name in _imports(tree, module, load_time_only=False):
            assert not _under(name, ("fl_core.containers", "fl_core.processes")), (
                f"{MODULES[module]}:{line}: a role imports {name}"
            )


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for _, name in _imports(tree, module, load_time_only=True):
            # Importing a.b.c loads the packages a and a.b first.
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def test_the_cycle_search_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_import_graph()) == []


@pytest.mark.parametrize("top", sorted(ROOTS))
def test_no_module_is_longer_than_the_limit(top: str) -> None:
    long = {
        str(path.relative_to(REPO)): n
        for module, path in MODULES.items()
        if module.startswith(top) and module not in GENERATED
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _private_reaches(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_private_scan_flags_a_reach() -> None:
    assert _private_reaches("self._a\ncls._b\nsuper()._c\nx.__len__\n", "f") == []
    assert _private_reaches("engine._lock\nself.cell._route\n", "f") == [
        "f:1: engine._lock",
        "f:2: self.cell._route",
    ]


def test_no_role_reaches_into_another_objects_private_members() -> None:
    reaches = []
    for module, path in MODULES.items():
        if _under(module, ("fl_core.roles", "fl_core.containers", "fl_core.processes")):
            reaches += _private_reaches(path.read_text(), str(path.relative_to(REPO)))
    assert reaches == []
