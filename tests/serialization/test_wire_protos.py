"""The committed protobuf code equals what the pinned protoc generates, and
only the envelope module sees it (Flower's check-protos idea)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "core" / "serialization"


def test_committed_pb2_files_equal_a_fresh_protoc_run(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(PROTO_DIR / "cell.proto"),
        ],
        check=True,
        capture_output=True,
    )
    for name in ("cell_pb2.py", "cell_pb2.pyi"):
        fresh = (tmp_path / name).read_bytes()
        committed = (PROTO_DIR / name).read_bytes()
        assert committed == fresh, (
            f"core/serialization/{name} is stale: regenerate it with "
            f"python -m grpc_tools.protoc -I core/serialization --python_out=core/serialization "
            f"--pyi_out=core/serialization core/serialization/cell.proto"
        )


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_only_the_envelope_module_touches_protobuf() -> None:
    allowed = {PROTO_DIR / "envelope.py", PROTO_DIR / "cell_pb2.py"}
    offenders = []
    for root in (REPO / "core", REPO / "plugins"):
        for path in root.rglob("*.py"):
            if path in allowed:
                continue
            for module in _imported_modules(path):
                if module.startswith("google.protobuf") or module.endswith("cell_pb2"):
                    offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert offenders == []


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("fl_core.serialization", ("google.protobuf", "numpy")),
        ("fl_core.serialization.model_codec", ("google.protobuf",)),
        ("fl_core.serialization.json_codec", ("google.protobuf", "numpy")),
    ],
)
def test_importing_a_module_pulls_in_only_what_it_needs(
    module: str, absent: tuple[str, ...]
) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
