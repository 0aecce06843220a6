"""POC workspaces without a running federation: prepare, status, and stop's fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fl_core.cli.poc_federation import (
    PocError,
    WorkspaceNotEmptyError,
    pid_running,
    prepare,
    status,
    stop,
)
from fl_core.config.federation import load_federation


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_prepare_writes_a_federation_that_loads_back(tmp_path: Path, transport: str) -> None:
    config = prepare(tmp_path / "poc", 3, transport)

    assert (tmp_path / "poc" / "federation.yaml").is_file()
    loaded = load_federation(tmp_path / "poc")
    assert loaded == config
    assert loaded.sites == ("site-1", "site-2", "site-3")
    assert loaded.transport.name == transport
    # Port 0: the OS picks a free port, so two POCs never collide.
    assert loaded.server.listen == f"{transport}://127.0.0.1:0"
    assert loaded.server_dir.is_dir()
    assert all(loaded.site_dir(site).is_dir() for site in loaded.sites)
    assert not loaded.url_file.exists()


def test_prepare_takes_an_empty_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "poc").mkdir()
    assert prepare(tmp_path / "poc", 1).sites == ("site-1",)


def test_prepare_refuses_a_non_empty_folder_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "poc"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceNotEmptyError) as info:
        prepare(folder, 2)
    assert str(folder) in str(info.value)
    assert "--force" in str(info.value)
    assert (folder / "notes.txt").read_text() == "mine"  # untouched
    assert not (folder / "federation.yaml").exists()


def test_force_replaces_an_old_workspace(tmp_path: Path) -> None:
    old = prepare(tmp_path / "poc", 3)
    (old.site_dir("site-3") / "log.txt").write_text("old")
    new = prepare(tmp_path / "poc", 1, force=True)
    assert new.sites == ("site-1",)
    assert not old.site_dir("site-3").exists()


def test_force_refuses_a_workspace_whose_poc_runs(tmp_path: Path) -> None:
    config = prepare(tmp_path / "poc", 1)
    (config.server_dir / "pid").write_text(str(os.getpid()))  # a live pid: "running"
    with pytest.raises(PocError, match="still running; stop it"):
        prepare(tmp_path / "poc", 1, force=True)
    assert (config.server_dir / "pid").exists()


def test_prepare_refuses_zero_clients(tmp_path: Path) -> None:
    with pytest.raises(PocError, match="at least 1 client, got 0"):
        prepare(tmp_path / "poc", 0)


def test_status_of_a_poc_that_never_started(tmp_path: Path) -> None:
    state = status(prepare(tmp_path / "poc", 2))
    assert state["running"] is False
    assert state["server"] == {"pid": None, "alive": False, "url": None}
    assert state["sites"]["site-2"] == {
        "pid": None,
        "alive": False,
        "registered": False,
        "last_seen": None,
    }
    assert state["jobs"] == []


def test_stop_of_a_poc_that_never_started_does_nothing(tmp_path: Path) -> None:
    assert stop(prepare(tmp_path / "poc", 2), timeout=1.0) == []


def _sleeper(*marker: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *marker])


def test_stop_terminates_a_client_parent_left_without_its_server(tmp_path: Path) -> None:
    config = prepare(tmp_path / "poc", 1)
    # What an orphaned CP looks like from outside: its pid file, and its module in argv.
    orphan = _sleeper("fl_core.processes.main", "client-parent")
    try:
        (config.site_dir("site-1") / "pid").write_text(f"{orphan.pid}\n")
        stop(config, timeout=5.0)
        assert not pid_running(orphan.pid)  # stop() reaps its own children, so no wait()
        assert not (config.site_dir("site-1") / "pid").exists()
    finally:
        orphan.kill()
        orphan.wait()


def test_stop_leaves_alone_a_process_that_reused_a_stale_pid(tmp_path: Path) -> None:
    config = prepare(tmp_path / "poc", 1)
    stranger = _sleeper()
    try:
        (config.site_dir("site-1") / "pid").write_text(f"{stranger.pid}\n")
        stop(config, timeout=1.0)
        assert pid_running(stranger.pid)
        assert not (config.site_dir("site-1") / "pid").exists()
    finally:
        stranger.kill()
        stranger.wait()
