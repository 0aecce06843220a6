"""The audit trail: who did what, when, and with what result, one JSON line each.

The server parent and each client parent append to `audit.jsonl` in their
workspace: admin actions (allowed and refused), site joins and leaves,
links refused at hello, jobs a site's policy refused. A line is written and
flushed before the action's answer leaves, so a crash loses at most the
line being written, never an earlier one. Nothing a peer sent goes in
unbounded: every field is cut to `MAX_FIELD` characters.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Final

__all__ = ["AUDIT_FILE", "MAX_FIELD", "AuditLog"]

AUDIT_FILE: Final = "audit.jsonl"
MAX_FIELD: Final = 512
"""Characters kept of each field (a peer chooses some of them)."""


def _cut(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."


class AuditLog:
    """Appends audit records to one file; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, who: object, action: str, target: str, result: str, **details: object) -> None:
        """Append `{time, who, action, target, result, ...details}` as one line."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "who": _cut(who),
            "action": _cut(action),
            "target": _cut(target),
            "result": _cut(result),
            **{key: _cut(value) for key, value in details.items()},
        }
        line = json.dumps(entry, sort_keys=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def entries(self) -> list[dict[str, str]]:
        """Every record so far (for `fl-core status` and tests); unreadable lines skipped."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        found: list[dict[str, str]] = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found.append(entry)
        return found
