"""The sites' metrics of a job, one JSON line each, in the server job's workspace."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TextIO


class SiteLog:
    """Appends JSON lines to `path`; opened at the first line, closed by `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._closed = False

    def write(self, entry: dict[str, object]) -> None:
        """Append `entry` as one line and flush it; after `close()` it is dropped."""
        line = json.dumps(entry, default=str)
        with self._lock:
            if self._closed:
                return
            if self._file is None:
                # Kept open: a thousand sites log a metric each per round.
                self._file = open(self.path, "a")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
