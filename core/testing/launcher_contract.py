"""The launcher contract: one test suite that every `Launcher` must pass.

Subclass `LauncherContract` in a test module and name the launcher as a job
config would: `launcher_name` (its registered name), `launcher_options` and
`plugin` (the entry-point name of the plugin that registers it, or
`(name, hooks_module)`). The suite builds the launcher through that
plugin's registered factory, in the test process and in the helper process
of the parent-death test, so the hook and the options are under contract
too::

    from fl_core.testing import LauncherContract

    class TestMyLauncher(LauncherContract):
        launcher_name = "mine"
        plugin = "my_plugin"

Overriding the `launcher` fixture (and `helper_launcher_code`) builds the
launcher another way.

Every job the suite starts is a small Python program (run with this
interpreter) that records the pids of itself and of any child it starts;
after each test every one of them must be gone, so a case that leaves a
process behind fails. Class attributes scale the suite: `wait` (the bound of
every wait; reached only when something is broken) and `concurrent_jobs`.
To mark one inherited test (`xfail`, `skip`), override it in the subclass
with the marker and call `super()`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import pytest

from fl_core.errors import FlCoreError
from fl_core.pids import pid_alive
from fl_core.spec import ComponentKind
from fl_core.spec.launcher import JobHandle, Launcher, LaunchSpec, ProcessType
from fl_core.testing.registered import PluginRef, component_factory, plugin_source

__all__ = ["ContractJob", "ContractJobs", "LauncherContract", "pid_running"]

PRELUDE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    PIDS = sys.argv[1]

    def record(pid):
        open(os.path.join(PIDS, str(pid)), "w").close()

    def ready():
        open(os.path.join(PIDS, "ready"), "w").close()

    record(os.getpid())
    """
)
"""Prepended to every job program: `record(pid)` notes a pid the suite must see gone,
`ready()` tells the test the job has set itself up."""


pid_running = pid_alive
"""Whether `pid` is a process that still runs (a zombie runs nothing)."""


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.01)


@dataclass
class ContractJob:
    """One job the suite started: its spec, handle and the folder of its pids."""

    spec: LaunchSpec
    handle: JobHandle
    pid_dir: Path

    def pids(self) -> list[int]:
        """The pids the job (and its children) recorded so far."""
        return sorted(int(p.name) for p in self.pid_dir.iterdir() if p.name.isdigit())

    def wait_ready(self, timeout: float) -> list[int]:
        """Wait for the job's `ready()`; its recorded pids."""
        _wait_until((self.pid_dir / "ready").exists, timeout, f"{self.spec.job_id} to be ready")
        return self.pids()

    def log(self) -> str:
        """What the job wrote to its log file."""
        return self.spec.log_file.read_text(errors="replace")


@dataclass
class ContractJobs:
    """Starts the suite's jobs and makes sure none of their processes outlives a test."""

    launcher: Launcher
    root: Path
    wait: float
    started: list[ContractJob] = field(default_factory=list)

    def spec(
        self,
        argv: Sequence[str],
        *,
        job_id: str | None = None,
        env: Mapping[str, str] | None = None,
        workspace: Path | None = None,
    ) -> LaunchSpec:
        """A spec with its own workspace and log file under the test's folder."""
        job_id = job_id or f"job-{len(self.started) + 1}"
        return LaunchSpec(
            job_id=job_id,
            role=ProcessType.CLIENT_JOB,
            argv=list(argv),
            workspace=workspace or self.root / "workspaces" / job_id,
            log_file=self.root / "logs" / f"{job_id}.log",
            env=dict(env or {}),
        )

    def python_argv(self, program: str, pid_dir: Path) -> list[str]:
        """argv running `program` (after `PRELUDE`) with this interpreter."""
        return [sys.executable, "-c", PRELUDE + textwrap.dedent(program), str(pid_dir)]

    def start(
        self,
        program: str,
        *,
        env: Mapping[str, str] | None = None,
        workspace: Path | None = None,
        launch: Callable[[LaunchSpec], JobHandle] | None = None,
    ) -> ContractJob:
        """Launch `program` as a job; `launch` replaces `launcher.launch`."""
        job_id = f"job-{len(self.started) + 1}"
        pid_dir = self.root / "pids" / job_id
        pid_dir.mkdir(parents=True)
        spec = self.spec(
            self.python_argv(program, pid_dir), job_id=job_id, env=env, workspace=workspace
        )
        handle = (launch or self.launcher.launch)(spec)
        job = ContractJob(spec, handle, pid_dir)
        self.started.append(job)
        return job

    def all_pids(self) -> list[int]:
        """Every pid recorded by a job of this test, including helper-started ones."""
        pids_root = self.root / "pids"
        if not pids_root.exists():
            return []
        return sorted(int(p.name) for p in pids_root.glob("*/*") if p.name.isdigit())

    def close(self) -> None:
        """Terminate every job, then fail if any recorded process still runs."""
        for job in self.started:
            job.handle.terminate(grace=1.0)
        pids = self.all_pids()
        _wait_until(
            lambda: not any(pid_running(p) for p in pids),
            self.wait,
            f"the test's processes to end (still running: {[p for p in pids if pid_running(p)]})",
        )


_SLEEPER = "ready()\ntime.sleep(300)\n"
_WAIT_FOR_GO = """
ready()
while not os.path.exists("go"):
    time.sleep(0.01)
"""
_STUBBORN_WITH_GRANDCHILD = """
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the sleep below too
grandchild = subprocess.Popen(["sleep", "300"])
record(grandchild.pid)
ready()
time.sleep(300)
"""

_HELPER = """
import json, sys, time
args = json.loads(sys.argv[1])
from fl_core.spec.launcher import LaunchSpec, ProcessType
from pathlib import Path
{build}
spec = LaunchSpec(
    job_id="orphan-test", role=ProcessType.CLIENT_JOB, argv=args["argv"],
    workspace=Path(args["workspace"]), log_file=Path(args["log_file"]),
)
handle = launcher.launch(spec)
print("launched", flush=True)
time.sleep(300)
"""


class LauncherContract:
    """The behaviour every launcher must have; subclass it and provide `launcher`."""

    launcher_name: ClassVar[str | None] = None
    """The component name, for building the launcher in a helper process."""
    launcher_options: ClassVar[Mapping[str, object]] = {}
    """Options for that component."""
    plugin: ClassVar[PluginRef | None] = None
    """The plugin that registers it; None: every installed plugin."""
    wait: ClassVar[float] = 10.0
    """The bound of every wait; reached only when something is broken."""
    concurrent_jobs: ClassVar[int] = 20
    """How many jobs `test_many_jobs_at_once` runs together."""

    @pytest.fixture
    def launcher(self) -> Launcher:
        """The launcher under test: by default from the registered factory of `launcher_name`."""
        if self.launcher_name is None:
            raise NotImplementedError(
                "a LauncherContract subclass must set `launcher_name` (and `plugin`) "
                "or provide a `launcher` fixture"
            )
        make = component_factory(ComponentKind.LAUNCHER, self.launcher_name, self.plugin)
        launcher = make(**self.launcher_options)
        assert isinstance(launcher, Launcher)
        return launcher

    @pytest.fixture
    def jobs(self, launcher: Launcher, tmp_path: Path) -> Iterator[ContractJobs]:
        """Starts jobs; at the end terminates them and checks that no process is left."""
        jobs = ContractJobs(launcher, tmp_path, self.wait)
        try:
            yield jobs
        finally:
            jobs.close()

    def helper_launcher_code(self) -> str:
        """Python source that binds `launcher` in a fresh process (the parent-death test)."""
        if self.launcher_name is None:
            pytest.skip("set launcher_name, or override helper_launcher_code")
        return (
            "from fl_core.testing.registered import component_factory\n"
            f"launcher = component_factory('launcher', {self.launcher_name!r}, "
            f"{plugin_source(self.plugin)})(**{dict(self.launcher_options)!r})\n"
        )

    # --- exit codes, log, workspace, environment ------------------------------------

    def test_stderr_goes_to_its_own_file_when_the_spec_names_one(
        self, jobs: ContractJobs, tmp_path: Path
    ) -> None:
        stderr_file = tmp_path / "logs" / "job-1.stderr"
        job = jobs.start(
            "print('to stdout', flush=True)\nprint('to stderr', file=sys.stderr)",
            launch=lambda spec: jobs.launcher.launch(replace(spec, stderr_file=stderr_file)),
        )
        assert job.handle.wait(self.wait) == 0
        assert stderr_file.read_text() == "to stderr\n"
        log = job.log()
        assert "to stdout" in log and "to stderr" not in log

    @pytest.mark.parametrize("code", [0, 3])
    def test_the_exit_code_is_reported(self, jobs: ContractJobs, code: int) -> None:
        job = jobs.start(f"sys.exit({code})")
        assert job.handle.wait(self.wait) == code
        assert job.handle.poll() == code

    def test_the_log_file_gets_stdout_and_stderr_appended(
        self, jobs: ContractJobs, tmp_path: Path
    ) -> None:
        earlier = tmp_path / "logs" / "job-1.log"
        earlier.parent.mkdir(parents=True)
        earlier.write_text("from an earlier run\n")
        job = jobs.start("print('to stdout', flush=True)\nprint('to stderr', file=sys.stderr)")
        assert job.spec.log_file == earlier
        assert job.handle.wait(self.wait) == 0
        log = job.log()
        assert log.startswith("from an earlier run\n")
        assert "to stdout" in log and "to stderr" in log

    def test_the_log_folder_is_created(self, jobs: ContractJobs) -> None:
        job = jobs.start("print('hello')")
        assert job.handle.wait(self.wait) == 0
        assert "hello" in job.log()

    def test_the_workspace_is_created_and_is_the_cwd(
        self, jobs: ContractJobs, tmp_path: Path
    ) -> None:
        workspace = tmp_path / "not" / "yet" / "there"
        job = jobs.start("open('where', 'w').write(os.getcwd())", workspace=workspace)
        assert job.handle.wait(self.wait) == 0
        assert Path((workspace / "where").read_text()).resolve() == workspace.resolve()

    def test_spec_env_reaches_the_job_on_top_of_the_parents(self, jobs: ContractJobs) -> None:
        program = """
        print("value=" + os.environ["FL_CONTRACT_VALUE"])
        sys.exit(0 if os.environ.get("PATH") == {path!r} else 5)
        """.format(path=os.environ.get("PATH"))
        job = jobs.start(program, env={"FL_CONTRACT_VALUE": "a b=c"})
        assert job.handle.wait(self.wait) == 0, job.log()
        assert "value=a b=c" in job.log()

    def test_stdin_is_closed(self, jobs: ContractJobs) -> None:
        job = jobs.start("sys.exit(0 if sys.stdin is None or sys.stdin.read() == '' else 6)")
        assert job.handle.wait(self.wait) == 0, job.log()

    # --- poll, wait, terminate ---------------------------------------------------------

    def test_poll_and_wait_say_none_while_the_job_runs(self, jobs: ContractJobs) -> None:
        job = jobs.start(_WAIT_FOR_GO)
        job.wait_ready(self.wait)
        assert job.handle.poll() is None
        assert job.handle.wait(0.05) is None
        (job.spec.workspace / "go").touch()
        assert job.handle.wait(self.wait) == 0

    def test_terminate_stops_a_job_within_its_grace(self, jobs: ContractJobs) -> None:
        job = jobs.start(_SLEEPER)
        pids = job.wait_ready(self.wait)
        job.handle.terminate(grace=self.wait)
        assert job.handle.poll() == -signal.SIGTERM
        assert [p for p in pids if pid_running(p)] == []
        job.handle.terminate(grace=self.wait)  # idempotent
        assert job.handle.poll() == -signal.SIGTERM

    def test_terminate_kills_a_job_that_ignores_sigterm_and_its_grandchild(
        self, jobs: ContractJobs
    ) -> None:
        job = jobs.start(_STUBBORN_WITH_GRANDCHILD)
        pids = job.wait_ready(self.wait)
        assert len(pids) == 2  # the job and its `sleep 300`
        job.handle.terminate(grace=0.2)
        assert job.handle.poll() == -signal.SIGKILL
        assert [p for p in pids if pid_running(p)] == []

    def test_terminate_on_an_ended_job_is_harmless(self, jobs: ContractJobs) -> None:
        job = jobs.start("sys.exit(4)")
        assert job.handle.wait(self.wait) == 4
        job.handle.terminate(grace=0.0)
        job.handle.terminate()
        assert job.handle.poll() == 4

    def test_a_missing_program_raises_naming_it(self, jobs: ContractJobs) -> None:
        spec = jobs.spec(["fl-core-no-such-program"], job_id="job-missing")
        with pytest.raises(FlCoreError) as info:
            jobs.launcher.launch(spec)
        message = str(info.value)
        assert "fl-core-no-such-program" in message
        assert "job-missing" in message
        assert str(ProcessType.CLIENT_JOB) in message

    def test_many_jobs_at_once(self, jobs: ContractJobs) -> None:
        started = [
            jobs.start(_WAIT_FOR_GO + f"sys.exit({i % 7})") for i in range(self.concurrent_jobs)
        ]
        for job in started:
            job.wait_ready(self.wait)
        assert [job.handle.poll() for job in started] == [None] * len(started)
        for job in started:
            (job.spec.workspace / "go").touch()
        # Each job exits with its own code, so crossed handles would show.
        codes = [job.handle.wait(self.wait) for job in started]
        assert codes == [i % 7 for i in range(self.concurrent_jobs)]

    # --- the parent's life --------------------------------------------------------------

    def test_a_job_launched_from_a_short_lived_thread_keeps_running(
        self, jobs: ContractJobs
    ) -> None:
        # PR_SET_PDEATHSIG fires when the forking *thread* ends: a launcher built
        # on it would lose its job here.
        box: list[ContractJob] = []
        thread = threading.Thread(target=lambda: box.append(jobs.start(_WAIT_FOR_GO)))
        thread.start()
        thread.join(self.wait)
        assert box, "launch from a thread did not return"
        job = box[0]
        job.wait_ready(self.wait)
        assert job.handle.poll() is None
        (job.spec.workspace / "go").touch()
        assert job.handle.wait(self.wait) == 0

    def test_the_job_dies_when_the_launchers_process_is_killed(
        self, jobs: ContractJobs, tmp_path: Path
    ) -> None:
        pid_dir = tmp_path / "pids" / "orphan-test"
        pid_dir.mkdir(parents=True)
        args = {
            "argv": jobs.python_argv(_STUBBORN_WITH_GRANDCHILD, pid_dir),
            "workspace": str(tmp_path / "workspaces" / "orphan-test"),
            "log_file": str(tmp_path / "logs" / "orphan-test.log"),
        }
        helper_program = _HELPER.format(build=self.helper_launcher_code())
        helper = subprocess.Popen(
            [sys.executable, "-c", helper_program, json.dumps(args)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            _wait_until((pid_dir / "ready").exists, self.wait, "the helper's job to be ready")
            pids = sorted(int(p.name) for p in pid_dir.iterdir() if p.name.isdigit())
            assert len(pids) == 2 and helper.pid not in pids
            helper.kill()
            helper.wait(self.wait)
            _wait_until(
                lambda: not any(pid_running(p) for p in pids),
                self.wait,
                "the job and its grandchild to die with the launcher's process",
            )
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            assert helper.stdout is not None
            helper.stdout.close()
