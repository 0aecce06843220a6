"""fl-core's pytest plugin: a plugin package's tests get the fixtures and suites, no conftest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TEST_FILE = textwrap.dedent(
    """
    import pytest

    from fl_core.testing import SecurityProviderContract

    pytestmark = pytest.mark.usefixtures("fl_no_threads_left")


    class TestNoneThroughItsFactory(SecurityProviderContract):
        component = "none"
        plugin = "security_none"


    def test_fl_job_writes_a_job_folder(fl_job):
        job = fl_job(script="print('hi')\\n", rounds=1)
        assert (job / "job.yaml").is_file() and (job / "train.py").is_file()
    """
)


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -p no:cacheprovider: nothing is written into the package under test.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _package(tmp_path: Path, conftest: str | None = None) -> Path:
    folder = tmp_path / "my_plugin_tests"
    folder.mkdir()
    (folder / "test_mine.py").write_text(TEST_FILE)
    if conftest is not None:
        (folder / "conftest.py").write_text(conftest)
    return folder


def test_a_package_without_a_conftest_gets_the_fixtures_and_the_suites(tmp_path: Path) -> None:
    folder = _package(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["test_mine.py"]
    result = _pytest(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_without_the_plugin_the_fixtures_are_missing(tmp_path: Path) -> None:
    result = _pytest(_package(tmp_path), "-p", "no:fl_core")
    assert result.returncode != 0
    assert "fixture 'fl_no_threads_left' not found" in result.stdout


def test_an_older_conftest_naming_the_fixtures_module_still_works(tmp_path: Path) -> None:
    folder = _package(tmp_path, conftest='pytest_plugins = ["fl_core.testing.fixtures"]\n')
    result = _pytest(folder)
    assert result.returncode == 0, result.stdout + result.stderr


def test_loading_the_plugin_imports_neither_the_runtime_nor_heavy_libraries() -> None:
    heavy = ("numpy", "yaml", "dependency_injector", "grpc", "cryptography", "fl_core.roles")
    heavy += ("fl_core.cell", "fl_core.plugins", "fl_core.config", "fl_core.containers")
    code = (
        "import sys, fl_core.testing.pytest_plugin\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} "
        f"or any(m == h or m.startswith(h + '.') for h in {heavy!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
