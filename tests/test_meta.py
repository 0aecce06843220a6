"""House rules: plugin folders match entry points, core stays plugin-free, hooks documented."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path

import pluggy

from fl_core.plugins import _HOOKSPECS

REPO = Path(__file__).resolve().parents[1]


def _entry_points() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(data["project"]["entry-points"]["fl_core"])


def test_every_plugin_folder_has_an_entry_point_and_the_reverse() -> None:
    folders = {
        p.name for p in (REPO / "plugins").iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    entry_points = _entry_points()
    assert folders == set(entry_points)
    for name, target in entry_points.items():
        assert target == f"fl_plugins.{name}.hooks", name
        assert (REPO / "plugins" / name / "hooks.py").exists()


def test_core_never_imports_plugins() -> None:
    offenders = []
    for path in (REPO / "core").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno}" for n in names if n.split(".")[0] == "fl_plugins"]
    assert offenders == []


def test_plugin_hooks_modules_import_nothing_heavy() -> None:
    heavy = {"grpc", "docker", "torch"}
    for hooks in (REPO / "plugins").glob("*/hooks.py"):
        tree = ast.parse(hooks.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in top:
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert (module or "").split(".")[0] not in heavy, f"{hooks} imports {module}"


def test_every_hook_is_documented_with_its_exact_parameters() -> None:
    docs = "\n".join(p.read_text() for p in (REPO / "docs").rglob("*.md"))
    marker = pluggy.HookspecMarker("fl_core")
    checked = 0
    for spec in _HOOKSPECS:
        for name, function in inspect.getmembers(spec, inspect.isfunction):
            if getattr(function, marker.project_name + "_spec", None) is None:
                continue
            checked += 1
            params = [p for p in inspect.signature(function).parameters if p != "self"]
            signature = f"{name}({', '.join(params)})"
            assert signature in docs, f"docs/ does not document {signature}"
    assert checked >= len(_HOOKSPECS)  # every spec class has at least one hook


def test_every_spec_module_is_import_light() -> None:
    for path in (REPO / "core" / "spec").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("fl_core.runtime", "fl_core.cell")), path


def test_no_plugin_imports_another_plugin() -> None:
    # Plugins meet through the spec and the registry; an import between two
    # would tie one to the other being installed (the cell pipe once did).
    offenders = []
    for folder in sorted(p for p in (REPO / "plugins").iterdir() if p.is_dir()):
        for path in sorted(folder.rglob("*.py")):
            package = ["fl_plugins", *path.relative_to(REPO / "plugins").parent.parts]
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = package[: len(package) - node.level + 1] if node.level else []
                    module = ".".join([*base, *([node.module] if node.module else [])])
                    names = [f"{module}.{alias.name}" for alias in node.names]
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names = [str(node.args[0].value)]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "fl_plugins" and len(parts) > 1 and parts[1] != folder.name:
                        offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []
