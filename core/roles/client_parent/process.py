"""The client parent process (CP, cell `<site>`): keeps its site in the federation.

`ClientParent` is what the POC and production containers build for the
`client-parent` role. It is given a factory of `ClientEngine`s (each wired
with the federation's transport and job-process launcher) because a site
joins afresh when its server parent restarts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fl_core.config.federation import FederationConfig
from fl_core.errors import CellError, FlCoreError
from fl_core.pids import write_pid
from fl_core.roles.client_parent.engine import ClientEngine
from fl_core.spec.transport import Transport

JOIN_TIMEOUT = 60.0
"""Seconds a client parent keeps trying to join a server parent that is not up yet."""


class ClientParent:
    """Joins the server parent (again after it restarts) and runs the site's jobs."""

    def __init__(
        self,
        federation: FederationConfig,
        site: str,
        *,
        engines: Callable[[], ClientEngine],
        transport: Transport,
        join_timeout: float = JOIN_TIMEOUT,
    ) -> None:
        self.federation = federation
        self.site = site
        self.engines = engines
        self.transport = transport
        self.join_timeout = join_timeout

    def run(self, stop: threading.Event) -> int:
        """Take part in the federation until stopped; 0 once its jobs are gone."""
        pid_file = write_pid(self.federation.site_dir(self.site))
        engine = self.engines()
        try:
            while not stop.is_set():
                deadline = time.monotonic() + self.join_timeout
                while True:  # the server parent may still be starting, or restarting
                    try:
                        engine.start(server_url(self.federation, self.join_timeout))
                        break
                    except CellError as exc:
                        if stop.is_set() or time.monotonic() > deadline:
                            raise FlCoreError(
                                f"{self.site} could not join the server: {exc}"
                            ) from exc
                        engine.cell.close()
                        engine = self.engines()
                        time.sleep(0.2)
                while not stop.is_set() and not engine.wait(0.2):
                    pass
                if stop.is_set() or not engine.moved.is_set():
                    break
                # A restarted server parent listens on a new URL: its old jobs are gone
                # with it, so this site's are stopped, and a fresh engine joins the new one.
                engine.stop("the server parent restarted")
                engine = self.engines()
        finally:
            engine.stop()
            self.transport.close()
            pid_file.unlink(missing_ok=True)
        return 0


def server_url(federation: FederationConfig, timeout: float) -> str:
    """The server parent's URL: the federation's `server.url`, or else the one the
    server parent wrote once it listened (one machine), waiting up to `timeout` for it."""
    if federation.server.url:
        return federation.server.url
    deadline = time.monotonic() + timeout
    while True:
        try:
            url = federation.url_file.read_text().strip()
            if url:
                return url
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise FlCoreError(
                f"the server parent did not come up within {timeout:g} s (no {federation.url_file})"
            )
        time.sleep(0.05)
