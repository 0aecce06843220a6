"""The server parent process (SP, cell `server`): runs its engine until told to stop.

`ServerParent` is what the POC and production containers build for the
`server-parent` role, with the engine they wired (federation config, the
federation's transport and job-process launcher, the checks run at submit).
"""

from __future__ import annotations

import threading

from fl_core.pids import write_pid
from fl_core.roles.server_parent.engine import ServerEngine


class ServerParent:
    """Runs a `ServerEngine` until `stop` is set or an admin shuts the federation down."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine

    def run(self, stop: threading.Event) -> int:
        """Serve until stopped; 0 once everything it started is gone."""
        engine = self.engine
        pid_file = write_pid(engine.config.server_dir)
        try:
            engine.start()
            while not stop.is_set() and not engine.wait(0.2):
                pass
        finally:
            engine.stop()
            engine.transport.close()
            pid_file.unlink(missing_ok=True)
        return 0
