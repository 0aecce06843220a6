"""`ProcessLauncher`: a job as a local process group that cannot outlive its parent.

Each job runs under a small supervisor (`supervise.py`, a second Python
process) that holds one end of a socket pair; this process holds the other.
When this process dies, even by SIGKILL, the kernel closes its end and the
supervisor SIGKILLs the job's whole process group. See `supervise.py` for why
this is used instead of `PR_SET_PDEATHSIG`.

A job's life is bound to the process that launched it, not to its handle:
running handles are kept in a module-level set, so dropping a handle does not
close the socket and kill the job.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from fl_core.errors import FlCoreError
from fl_core.spec.launcher import JobHandle, Launcher, LaunchSpec, ProcessType

__all__ = ["LaunchError", "ProcessJob", "ProcessLauncher"]

SUPERVISOR = Path(__file__).with_name("supervise.py")
"""The supervisor script; run by path with `-I -S` so it starts fast and sees no user site."""

GROUP_GONE_WAIT = 5.0
"""How long `terminate` waits for SIGKILLed processes to vanish; reached only if the
kernel is very slow or a process escaped the supervisor's reaping."""

_running: set[ProcessJob] = set()
_running_lock = threading.Lock()


class LaunchError(FlCoreError):
    """A job process could not be started; `reason` says what failed."""

    def __init__(self, job_id: str, role: ProcessType | str, reason: str) -> None:
        self.job_id = job_id
        self.role = role
        self.reason = reason
        super().__init__(f"cannot launch the {role} of job {job_id!r}: {reason}")


class ProcessJob(JobHandle):
    """A running job: its supervisor's `Popen` and the job's pid (= its group id)."""

    def __init__(
        self, spec: LaunchSpec, supervisor: subprocess.Popen[bytes], sock: socket.socket, pid: int
    ) -> None:
        self.spec = spec
        self.supervisor = supervisor
        self.pid = pid
        """The job process's pid; also the id of its process group."""
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ProcessJob {self.spec.job_id} {self.spec.role} pid={self.pid}>"

    @property
    def pgid(self) -> int:
        """The job's process group: the job and every descendant that stayed in it."""
        return self.pid

    def poll(self) -> int | None:
        """The job's exit code (negative: killed by that signal), or None while it runs."""
        return self._ended(self.supervisor.poll())

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` s (None: forever); the exit code, or None if still running."""
        try:
            return self._ended(self.supervisor.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM the job's group, SIGKILL it after `grace` s; return when all of it is gone.

        Idempotent, and harmless on a job that already ended.
        """
        with self._lock:
            if self.poll() is None:
                self._signal(signal.SIGTERM)
                if self.wait(max(grace, 0.0)) is None:
                    self._signal(signal.SIGKILL)
                    self.wait()
            self._wait_group_gone()

    def _signal(self, sig: int) -> None:
        # Only while the supervisor runs: it keeps the job's pid from being reused
        # until the group is dead, so the signal cannot reach a stranger's group.
        if self.supervisor.poll() is None:
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                pass  # the job ended between the check and the signal

    def _wait_group_gone(self) -> None:
        # The supervisor exits only after reaping the group, so this normally
        # returns at once; it covers platforms where init reaps the orphans.
        deadline = time.monotonic() + GROUP_GONE_WAIT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return  # the id now belongs to someone else's group
            time.sleep(0.01)

    def _ended(self, returncode: int | None) -> int | None:
        if returncode is not None and self._sock is not None:
            with _running_lock:
                _running.discard(self)
            self._sock.close()
            self._sock = None
        return returncode


class ProcessLauncher(Launcher):
    """Starts each job as a local process in a process group of its own.

    The job's cwd is `spec.workspace` (created if missing), its stdout and
    stderr are appended to `spec.log_file` (stderr to `spec.stderr_file` if
    set), its stdin is closed, and its environment is this process's plus
    `spec.env`. The job and its descendants are SIGKILLed if this process dies.

    Options: `start_timeout` (s, default 30) bounds the wait for the supervisor
    to report that the program started; `python` is the interpreter that runs
    the supervisor (default: this one).
    """

    def __init__(self, *, start_timeout: float = 30.0, python: str | None = None) -> None:
        self.start_timeout = start_timeout
        self.python = python or sys.executable

    def launch(self, spec: LaunchSpec) -> ProcessJob:
        """Start `spec.argv`; raise `LaunchError` if it cannot be started."""
        if not spec.argv:
            raise LaunchError(spec.job_id, spec.role, "argv is empty")
        _forget_ended()
        try:
            spec.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LaunchError(
                spec.job_id, spec.role, f"cannot create workspace {spec.workspace}: {exc}"
            ) from exc
        opened: list[BinaryIO] = []  # handed to the child, closed below
        for path in (spec.log_file, spec.stderr_file):
            if path is None:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                opened.append(open(path, "ab"))
            except OSError as exc:
                for f in opened:
                    f.close()
                raise LaunchError(
                    spec.job_id, spec.role, f"cannot open log file {path}: {exc}"
                ) from exc
        log, err = opened[0], opened[-1]
        ours, theirs = socket.socketpair()
        try:
            with log, err:
                supervisor = subprocess.Popen(
                    [
                        self.python,
                        "-I",
                        "-S",
                        str(SUPERVISOR),
                        str(os.getpid()),
                        str(theirs.fileno()),
                        "--",
                        *spec.argv,
                    ],
                    cwd=spec.workspace,
                    env={**os.environ, **spec.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=err,
                    pass_fds=(theirs.fileno(),),
                    close_fds=True,
                    start_new_session=True,
                )
        except OSError as exc:
            ours.close()
            raise LaunchError(
                spec.job_id, spec.role, f"cannot start the supervisor {self.python}: {exc}"
            ) from exc
        finally:
            theirs.close()
        pid = self._handshake(spec, supervisor, ours)
        job = ProcessJob(spec, supervisor, ours, pid)
        with _running_lock:
            _running.add(job)
        return job

    def _handshake(
        self, spec: LaunchSpec, supervisor: subprocess.Popen[bytes], sock: socket.socket
    ) -> int:
        """Read the supervisor's `started <pid>` line; raise `LaunchError` on anything else."""
        sock.settimeout(self.start_timeout)
        line = b""
        try:
            while not line.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                line += chunk
        except TimeoutError:
            reason = f"the program did not start within {self.start_timeout:g} s"
        except OSError as exc:
            reason = f"lost the supervisor: {exc}"
        else:
            word, _, rest = line.decode(errors="replace").strip().partition(" ")
            if word == "started":
                sock.settimeout(None)
                return int(rest)
            if word == "failed":
                reason = f"cannot run {spec.argv[0]!r}: {rest}"
            else:
                reason = f"the supervisor ended before starting {spec.argv[0]!r}"
        sock.close()
        # Closing our end makes a still-running supervisor kill whatever it started.
        try:
            code = supervisor.wait(self.start_timeout)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            code = supervisor.wait()
        raise LaunchError(
            spec.job_id,
            spec.role,
            f"{reason} (supervisor exit code {code}; see {spec.log_file})",
        )


def _forget_ended() -> None:
    """Drop ended jobs nobody polled, so their sockets do not pile up."""
    with _running_lock:
        jobs = list(_running)
    for job in jobs:
        job.poll()
