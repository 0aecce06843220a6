"""Facts about a process: whether it still runs, how it ended, what it last wrote."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a process that still runs (a zombie runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # the pid was reused by another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill()


def describe_exit(code: int) -> str:
    """An exit code as words: 'exited with code 1', 'was killed by SIGKILL'."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def read_tail(path: Path, limit: int, start: int = 0) -> str:
    """The last `limit` bytes of `path` from offset `start` on, as text; "" if unreadable."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def write_pid(folder: Path) -> Path:
    """Write this process's pid into `folder/pid` (atomically) and return the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pid"
    tmp = path.with_name("pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)
    return path


STATUS_FILE = "status.json"
"""What a parent process last said about itself (`fl-core status KIT` reads it)."""


class StatusFile:
    """`folder/status.json`, rewritten (in one step) only when what it says changes.

    A parent reports every heartbeat or so; most reports repeat the last one,
    and those cost no file write.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATUS_FILE
        self._last = ""

    def write(self, data: dict[str, object]) -> None:
        """Say `data`, if it differs from what the file says."""
        import json

        text = json.dumps(data) + "\n"
        if text == self._last:
            return
        tmp = self.path.with_name(STATUS_FILE + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)
        self._last = text
