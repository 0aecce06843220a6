"""The `process` launcher: its hook and options, the launcher contract, and what only it does."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_core.errors import ConfigError, FlCoreError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec.launcher import Launcher, LaunchSpec, ProcessType
from fl_core.testing.launcher_contract import ContractJobs, LauncherContract, pid_running
from fl_plugins.launcher_process import hooks
from fl_plugins.launcher_process.launcher import LaunchError, ProcessJob, ProcessLauncher

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
WAIT = 10.0


class TestProcessLauncherContract(LauncherContract):
    """The contract through the factory `launcher_process` registers."""

    launcher_name = "process"
    plugin = "launcher_process"


# --- the hook and options ---------------------------------------------------------


def _registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("launcher_process", hooks)]).registry()


def test_the_hook_registers_process_and_the_factory_builds_a_launcher() -> None:
    registry = _registry()
    assert registry.names("launcher") == {"process": "launcher_process"}
    launcher = registry.create("launcher", "process", {"start_timeout": 5}, expect=Launcher)
    assert isinstance(launcher, ProcessLauncher)
    assert launcher.start_timeout == 5


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"grace": 1.0}, "grace", "no such option; known: python, start_timeout"),
        ({"start_timeout": "soon"}, "start_timeout", "expected float"),
        ({"start_timeout": 0}, "start_timeout", "must be positive"),
        ({"python": ""}, "python", "must not be empty"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _registry().create("launcher", "process", options)
    assert info.value.key == f"components.launcher.options.{key}"
    assert problem in str(info.value)


# --- what only the process launcher does --------------------------------------------


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[ContractJobs]:
    jobs = ContractJobs(ProcessLauncher(), tmp_path, WAIT)
    try:
        yield jobs
    finally:
        jobs.close()


def test_pid_is_the_job_and_its_process_group(jobs: ContractJobs) -> None:
    job = jobs.start("ready()\nprint('group', os.getpgrp(), flush=True)\ntime.sleep(300)")
    pids = job.wait_ready(WAIT)
    handle = job.handle
    assert isinstance(handle, ProcessJob)
    assert pids == [handle.pid]
    assert os.getpgid(handle.pid) == handle.pgid == handle.pid != os.getpgrp()
    handle.terminate(grace=WAIT)


def test_the_supervisor_is_reaped_no_zombie_is_left(jobs: ContractJobs) -> None:
    job = jobs.start("sys.exit(0)")
    handle = job.handle
    assert isinstance(handle, ProcessJob)
    assert handle.wait(WAIT) == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(handle.supervisor.pid, os.WNOHANG)


def test_a_grandchild_left_behind_by_an_ended_job_is_killed(jobs: ContractJobs) -> None:
    job = jobs.start(
        "grandchild = subprocess.Popen(['sleep', '300'])\nrecord(grandchild.pid)\nready()\n"
        "while not os.path.exists('go'):\n    time.sleep(0.01)\n"
    )
    pids = job.wait_ready(WAIT)
    (job.spec.workspace / "go").touch()
    assert job.handle.wait(WAIT) == 0
    assert [p for p in pids if pid_running(p)] == []


def test_a_grandchild_in_a_session_of_its_own_is_killed_too(jobs: ContractJobs) -> None:
    job = jobs.start(
        "grandchild = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "record(grandchild.pid)\nready()\ntime.sleep(300)\n"
    )
    pids = job.wait_ready(WAIT)
    job.handle.terminate(grace=WAIT)
    assert [p for p in pids if pid_running(p)] == []


def test_a_signal_to_the_supervisor_reaches_the_job(jobs: ContractJobs) -> None:
    job = jobs.start("ready()\ntime.sleep(300)")
    job.wait_ready(WAIT)
    handle = job.handle
    assert isinstance(handle, ProcessJob)
    os.kill(handle.supervisor.pid, signal.SIGTERM)
    assert handle.wait(WAIT) == -signal.SIGTERM


def test_a_workspace_that_cannot_be_created_names_the_job_and_the_path(
    jobs: ContractJobs, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    spec = jobs.spec(["true"], job_id="job-ws", workspace=blocker / "ws")
    with pytest.raises(LaunchError) as info:
        jobs.launcher.launch(spec)
    assert isinstance(info.value, FlCoreError)
    assert info.value.job_id == "job-ws" and info.value.role == ProcessType.CLIENT_JOB
    assert "cannot create workspace" in str(info.value) and str(blocker) in str(info.value)


def test_an_empty_argv_is_refused(tmp_path: Path) -> None:
    spec = LaunchSpec("job-e", ProcessType.SERVER_JOB, [], tmp_path / "ws", tmp_path / "log")
    with pytest.raises(LaunchError, match="argv is empty"):
        ProcessLauncher().launch(spec)


def test_a_program_that_is_not_executable_is_refused(jobs: ContractJobs, tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(LaunchError, match="PermissionError"):
        jobs.launcher.launch(jobs.spec([str(script)]))
