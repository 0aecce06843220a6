"""The processes the command line starts and stops: fl-core's parents, by pid file or by path.

Shared by the POC (`fl_core.cli.poc_federation`) and by participants run from
startup kits (`fl_core.cli.kits`): how a parent is spawned in its own session
with its log in its workspace, how a pid file is read, and how everything
that names a folder is found and ended (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from fl_core.errors import FlCoreError
from fl_core.pids import pid_alive

__all__ = [
    "KILL_WAIT",
    "LOG_FILE",
    "MAIN",
    "PID_FILE",
    "TAIL_LINES",
    "StillRunningError",
    "is_runtime_process",
    "naming",
    "pid_running",
    "read_pid",
    "spawn",
    "sweep",
    "tail",
    "terminate",
    "wait_gone",
]

PID_FILE: Final = "pid"
LOG_FILE: Final = "log.txt"
TAIL_LINES: Final = 20
"""Lines of a process's log shown when it did not come up."""
KILL_WAIT: Final = 5.0
"""Seconds a process has to exit after SIGTERM before SIGKILL."""
POLL: Final = 0.1
MAIN: Final = "fl_core.processes.main"


class StillRunningError(FlCoreError):
    """Processes survived SIGKILL; the message names them."""


def pid_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not; our own zombies are reaped)."""
    try:
        # A POC started by this process is our child: reap it, or it lingers as a zombie.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return pid_alive(pid)


def is_runtime_process(pid: int) -> bool:
    """Whether `pid` runs `fl_core.processes.main` (a stale pid file may name a pid the
    OS has since given to something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_running(pid)  # no /proc: trust the pid file
    return MAIN.encode() in cmdline


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None if there is none."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def spawn(args: list[str], folder: Path) -> subprocess.Popen[bytes]:
    """Start `fl_core.processes.main ARGS` in `folder`, appending to its `log.txt`."""
    with open(folder / LOG_FILE, "ab") as log:
        # A new session: Ctrl-C in the user's terminal reaches only the CLI
        # (which then shuts a POC down in order), and a participant started
        # from a kit outlives the command that started it.
        return subprocess.Popen(
            [sys.executable, "-m", MAIN, *args],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to `timeout` for `pids` to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if pid_running(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = [pid for pid in left if pid_running(pid)]
    return left


def terminate(pids: list[int], grace: float = KILL_WAIT) -> list[int]:
    """SIGTERM, then SIGKILL what is left after `grace`; returns pids that survived both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        pids = wait_gone(pids, grace)
        if not pids:
            break
    return pids


def naming(root: Path) -> list[int]:
    """Live processes (not this one) whose command line names a path under `root`."""
    needle = (str(root).rstrip("/") + "/").encode()
    found: list[int] = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found  # no /proc: the pid files are all there is
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if needle in cmdline and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def sweep(root: Path, grace: float = KILL_WAIT) -> list[int]:
    """End every process whose command line names a path under `root`; return their pids.

    For a POC folder that nothing else refers to, such as the temporary one of
    `fl-core run --mode poc`: every process of a POC names its folder (server
    and client parents their `federation.yaml`, job processes and their
    supervisors their job folders, training processes their script). After a
    clean `stop` there is nothing to find; this catches what an interrupted
    `start` spawned but did not get to record. SIGTERM, then SIGKILL after `grace`.
    """
    root = Path(root).resolve()
    ended: list[int] = []
    # Again after each round: a parent ended in one round may have spawned a child just before.
    for _ in range(3):
        found = naming(root)
        if not found:
            break
        survivors = terminate(found, grace)
        if survivors:
            raise StillRunningError(f"could not stop processes {survivors} of the POC in {root}")
        ended += found
    return ended
