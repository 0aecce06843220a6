"""Global models written to disk in the background, so a round never waits for the disk.

Writing a 1 GiB model took 3 to 4 s here (the disk is the limit), and a
workflow saves one every round. The arrays of a saved global model are not
changed afterwards (a workflow builds the next one in new memory), so the
file can be written while the next round already runs. One writer thread
per job; a model saved while an older one still waits to be written
replaces it (the file holds the newest either way); `flush` waits for the
last one and raises if a write failed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fl_core.errors import FlCoreError
from fl_core.model import Params, save_params

log = logging.getLogger(__name__)


class ModelWriter:
    """Writes `.npz` files on a thread of its own, newest first."""

    def __init__(self, name: str = "fl-model-writer") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._pending: tuple[Path, Params] | None = None
        self._writing = False
        self._error: FlCoreError | None = None
        self._thread: threading.Thread | None = None

    def submit(self, path: Path, params: Params) -> None:
        """Write `params` to `path` soon; raises if an earlier write failed."""
        with self._cond:
            if self._error is not None:
                raise self._error
            self._pending = (path, dict(params))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted is on disk; raises the first write error."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending is None and not self._writing, timeout)
            if self._error is not None:
                raise self._error
            if not done:
                raise FlCoreError(f"the global model was not written within {timeout:g} s")

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                assert self._pending is not None
                path, params = self._pending
                self._pending = None
                self._writing = True
                self._cond.notify_all()
            try:
                save_params(path, params)
            except Exception as exc:
                log.exception("could not write %s", path)
                with self._cond:
                    if self._error is None:
                        self._error = FlCoreError(f"could not write the model {path}: {exc}")
            finally:
                del params
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
