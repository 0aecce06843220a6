"""A grpc listener's unadmitted links: the hello timeout and the cap.

See "Admission" in `fl_core.spec.transport`. Each listener has one
`Admission`; it is touched only on the transport's loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from fl_core.errors import CellError
from fl_plugins.transport_grpc.connection import GrpcConnection

log = logging.getLogger("fl_plugins.transport_grpc")


class Admission:
    """A listener's unadmitted streams, oldest first; touched only on the loop thread."""

    def __init__(self, url: str, hello_timeout: float, max_unadmitted: int) -> None:
        self._url = url
        self._hello_timeout = hello_timeout
        self._max = max_unadmitted
        self._waiting: OrderedDict[GrpcConnection, asyncio.TimerHandle] = OrderedDict()
        self._evicted = 0

    def add(self, conn: GrpcConnection) -> None:
        """Track a just-accepted stream: it has `hello_timeout` seconds to be admitted."""
        while len(self._waiting) >= self._max:
            oldest, timer = self._waiting.popitem(last=False)
            timer.cancel()
            self._evicted += 1
            if self._evicted == 1:  # one line per flood, not one per stream
                log.warning(
                    "grpc: %s holds %d links that have not said hello (max_unadmitted); "
                    "closing the oldest ones, starting with %s",
                    self._url,
                    self._max,
                    oldest.peer,
                )
            oldest.refuse(
                CellError(
                    f"grpc: closed the link from {oldest.peer}: {self._max} newer links "
                    "had not said hello either"
                )
            )
        timer = asyncio.get_running_loop().call_later(self._hello_timeout, self._expire, conn)
        self._waiting[conn] = timer
        conn.on_admitted.append(self._forget)
        conn.on_lost.append(self._forget)

    def _forget(self, conn: GrpcConnection) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if not self._waiting:
            self._evicted = 0

    def _expire(self, conn: GrpcConnection) -> None:
        self._forget(conn)
        if conn.admitted:
            return
        why = f"it did not say hello within {self._hello_timeout:g} s"
        log.warning("grpc: closed the connection from %s: %s", conn.peer, why)
        conn.refuse(CellError(f"grpc: closed the link from {conn.peer}: {why}"))
