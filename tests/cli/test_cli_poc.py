"""`fl-core poc`, `fl-core job` and `run --mode poc` argument errors, with no federation up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"


def fl_core(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fl_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_poc_prepare_writes_the_workspace_and_refuses_it_twice(tmp_path: Path) -> None:
    ws = tmp_path / "poc"
    first = fl_core("poc", "prepare", "--workspace", str(ws), "--clients", "3")
    assert first.returncode == 0, first.stderr
    assert "server and 3 sites (site-1, site-2, site-3) over tcp" in first.stdout
    assert (ws / "federation.yaml").is_file()

    again = fl_core("poc", "prepare", "--workspace", str(ws))
    assert again.returncode == 1
    assert f"error: the POC workspace {ws} is not empty" in again.stderr

    forced = fl_core("poc", "prepare", "--workspace", str(ws), "--clients", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (ws / "site-3").exists()


def test_poc_workspace_defaults_to_fl_poc_in_the_current_folder(tmp_path: Path) -> None:
    proc = fl_core("poc", "prepare", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fl-poc" / "federation.yaml").is_file()
    assert (tmp_path / "fl-poc" / "site-2").is_dir()  # two sites by default


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["poc", "prepare", "--clients", "0"], "--clients: expected a whole number >= 1, got '0'"),
        (["poc", "prepare", "--transport", "pigeon"], "--transport: unknown transport 'pigeon'"),
        (["poc", "restart"], "invalid choice: 'restart'"),
        (["job", "status"], "the following arguments are required: job_id"),
        (["job", "logs", "abc", "--site"], "--site: expected one argument"),
        (["run", "--mode", "poc", str(HELLO), "--threads", "2"], "--threads applies to --mode"),
        (["run", str(HELLO), "--transport", "grpc"], "--secure apply to --mode poc only"),
        (["run", str(HELLO), "--secure"], "--secure apply to --mode poc only"),
    ],
)
def test_usage_errors_exit_2_and_say_what(args: list[str], message: str) -> None:
    proc = fl_core(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_poc_start_without_prepare_says_to_prepare(tmp_path: Path) -> None:
    proc = fl_core("poc", "start", "--workspace", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert "federation file not found (run `fl-core poc prepare`)" in proc.stderr


def test_poc_status_of_a_stopped_poc_exits_1(tmp_path: Path) -> None:
    ws = tmp_path / "poc"
    assert fl_core("poc", "prepare", "--workspace", str(ws)).returncode == 0
    proc = fl_core("poc", "status", "--workspace", str(ws))
    assert proc.returncode == 1
    assert "site-1  pid -  not running  not registered" in proc.stdout
    assert f"POC in {ws} is not running" in proc.stdout
    stopped = fl_core("poc", "stop", "--workspace", str(ws))
    assert stopped.returncode == 0, stopped.stderr


@pytest.mark.parametrize("action", [["list"], ["status", "j1"], ["submit", str(HELLO)]])
def test_job_commands_without_a_server_say_it_is_not_running(
    tmp_path: Path, action: list[str]
) -> None:
    ws = tmp_path / "poc"
    assert fl_core("poc", "prepare", "--workspace", str(ws)).returncode == 0
    proc = fl_core("job", *action, "--workspace", str(ws))
    assert proc.returncode == 1
    assert (
        f"error: the server parent of {ws} is not running (no {ws / 'server' / 'url'})"
        in proc.stderr
    )


def test_job_check_in_poc_mode_accepts_hello_numpy() -> None:
    proc = fl_core("job", "check", "--mode", "poc", str(HELLO))
    assert proc.returncode == 0, proc.stderr
    assert "ok (job 'hello-numpy'" in proc.stdout


@pytest.mark.parametrize("mode", ["simulator", "poc"])
def test_run_refuses_fewer_clients_than_min_clients_in_either_mode(
    tmp_path: Path, mode: str
) -> None:
    # Before, POC started a federation that waited at `submitted` for a site that never came.
    proc = fl_core(
        "run", "--mode", mode, str(HELLO), "--clients", "1", "--workspace", str(tmp_path / "ws")
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: --clients: 1 sites is fewer than min_clients 2" in proc.stderr
    assert "registered" not in proc.stdout  # refused before any process started
