"""The supervisor that stands between a launcher and its job process.

Run by `ProcessLauncher` as a script (`python -I -S supervise.py PARENT_PID FD -- ARGV...`),
so it uses the standard library only. It:

1. makes itself a child subreaper (Linux), so every orphaned descendant of the
   job is re-parented to it and reaped here, whatever PID 1 does;
2. starts ARGV in a process group of its own (the job's pid is its group id)
   and reports `started <pid>` (or `failed <reason>`) on the socket FD;
3. watches the socket: EOF, or a parent pid other than PARENT_PID, means the
   launcher's process died, and the job's whole group is SIGKILLed;
4. when the job ends, SIGKILLs what is left of its group, reaps every
   descendant, and ends the way the job ended (same exit code, same signal),
   so the launcher reads the job's status as `Popen` reports the supervisor's.

Why a supervisor instead of `prctl(PR_SET_PDEATHSIG)` in a `preexec_fn`: the
death signal fires when the *thread* that forked exits, not the process (a job
launched from a short-lived thread would die at once); it reaches only the
direct child, not the job's own children; and `preexec_fn` is not safe in a
process with threads.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

WATCH_INTERVAL = 1.0
"""How often the parent pid is compared, for the case where a forked copy of
the launcher's process keeps the socket open after the launcher died."""

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals sent to the supervisor itself, passed on to the job's group."""


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is already gone


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return  # elsewhere orphans go to init, which reaps them
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        sys.stderr.write(f"fl-core supervisor: prctl(PR_SET_CHILD_SUBREAPER) failed: {errno}\n")


def _watch_parent(sock: socket.socket, parent_pid: int, job_pgid: int) -> None:
    """Kill the job's group once the launcher's process is gone."""
    sock.settimeout(WATCH_INTERVAL)
    while True:
        try:
            if sock.recv(64) == b"":
                break  # every copy of the launcher's end is closed
        except TimeoutError:
            if os.getppid() != parent_pid:
                break  # re-parented: the launcher's process died
        except OSError:
            break
    _killpg(job_pgid, signal.SIGKILL)


def _children() -> list[int]:
    """Our current children (Linux); orphans that left the job's group end up here."""
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def _reap_all() -> None:
    """Kill and reap every remaining child: as subreaper these are the job's orphans,
    including any that moved to a process group of their own."""
    while True:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _end_like(returncode: int) -> int:
    """Exit the way the job did: a signal it died of is raised here too."""
    if returncode >= 0:
        return returncode
    sig = -returncode
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the job dumped core, not us
    except (ImportError, ValueError, OSError):
        pass
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP cannot be handled, so need no reset
    os.kill(os.getpid(), sig)
    return 128 + sig  # a signal whose default is to be ignored (SIGCHLD, SIGWINCH)


def main(args: list[str]) -> int:
    """Supervise one job; see the module docstring for the arguments."""
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: supervise.py PARENT_PID FD -- ARGV...\n")
        return 2
    parent_pid, fd, argv = int(args[0]), int(args[1]), args[3:]
    sock = socket.socket(fileno=fd)
    _become_subreaper()
    job: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if job is not None:
            _killpg(job.pid, signum)

    # A Python handler, not SIG_IGN: handlers are reset at exec, an ignore would be inherited.
    for sig in _FORWARDED:
        signal.signal(sig, forward)
    try:
        job = subprocess.Popen(argv, process_group=0, close_fds=True)
    except (OSError, ValueError) as exc:
        sock.sendall(f"failed {type(exc).__name__}: {exc}\n".encode())
        return 127
    sock.sendall(f"started {job.pid}\n".encode())
    threading.Thread(
        target=_watch_parent, args=(sock, parent_pid, job.pid), name="watch-parent", daemon=True
    ).start()
    if hasattr(os, "waitid"):
        # Wait without reaping: while the job is a zombie its pid, and so its
        # group id, cannot be reused, so killing the group below hits only ours.
        os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOWAIT)
    else:  # pragma: no cover - platforms without waitid
        job.wait()
    _killpg(job.pid, signal.SIGKILL)
    returncode = job.wait()
    _reap_all()
    return _end_like(returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
