"""House rules: plugin folders match entry points, core stays plugin-free, hooks documented."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path

import pluggy

from fl_core.spec.kinds import HOOKSPECS

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
    for spec in HOOKSPECS:
        for name, function in inspect.getmembers(spec, inspect.isfunction):
            if getattr(function, marker.project_name + "_spec", None) is None:
                continue
            checked += 1
            params = [p for p in inspect.signature(function).parameters if p != "self"]
            signature = f"{name}({', '.join(params)})"
            assert signature in docs, f"docs/ does not document {signature}"
    assert checked >= len(HOOKSPECS)  # every spec class has at least one hook


def test_every_spec_module_is_import_light() -> None:
    for path in (REPO / "core" / "spec").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("fl_core.roles", "fl_core.processes", "fl_core.cell")
                ), path


def test_every_component_kind_has_exactly_one_kind_entry_hook_and_interface() -> None:
    from fl_core.spec import ComponentKind
    from fl_core.spec.kinds import KINDS

    assert list(KINDS) == list(ComponentKind)
    hooks = [spec.hook for spec in KINDS.values()]
    assert len(set(hooks)) == len(hooks)
    interfaces = [spec.interface for spec in KINDS.values()]
    assert len(set(interfaces)) == len(interfaces)
    marker = pluggy.HookspecMarker("fl_core")
    for kind, spec in KINDS.items():
        assert spec.hook.startswith("fl_core_register_"), spec.hook
        hook = getattr(spec.hookspecs, spec.hook, None)
        assert hook is not None, f"{spec.hookspecs.__name__} declares no {spec.hook}"
        assert getattr(hook, marker.project_name + "_spec", None) is not None, spec.hook
        assert spec.interface.__module__ == spec.hookspecs.__module__, kind


CONTRACT_OF_KIND = {
    "transport": "TransportContract",
    "launcher": "LauncherContract",
    "workflow": "WorkflowContract",
    "pipe": "PipeContract",
    "security": "SecurityProviderContract",
}


def _contract_classes() -> set[tuple[str, str, str]]:
    """(contract, component, plugin) of every test class that names what it tests."""
    found: set[tuple[str, str, str]] = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            values: dict[str, str] = {}
            for statement in node.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant):
                    for target in statement.targets:
                        if isinstance(target, ast.Name) and isinstance(statement.value.value, str):
                            values[target.id] = statement.value.value
            name = values.get("component") or values.get("launcher_name", "")
            for contract in bases & set(CONTRACT_OF_KIND.values()):
                found.add((contract, name, values.get("plugin", "")))
    return found


def test_every_builtin_component_runs_its_kinds_contract_through_its_factory() -> None:
    from fl_core.plugins import make_plugin_manager

    pm = make_plugin_manager()
    builtin = {name for name, info in pm.infos.items() if info.distribution == "fl-core"}
    covered = _contract_classes()
    missing = [
        f"{c.kind} {c.name!r} of {c.plugin}"
        for c in pm.registry().components()
        if c.plugin in builtin and (CONTRACT_OF_KIND[c.kind], c.name, c.plugin) not in covered
    ]
    assert missing == [], "no contract test class names these components and their plugin"


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
