"""A listener's unadmitted links: the hello timeout and the cap, for any transport.

See "Admission" in `fl_core.spec.transport`: until the cell admits a link,
the transport closes it when it has not said hello within `hello_timeout`,
and holds at most `max_unadmitted` such links per listener, closing the
oldest when one more arrives (so a flood cannot lock out a real peer that
says hello within milliseconds). Transports built on an asyncio loop can
give each listener one `Admission` and have their connections meet
`UnadmittedLink`; it is touched only on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from fl_core.errors import CellError

__all__ = ["Admission", "UnadmittedLink", "check_limits"]


def check_limits(
    hello_timeout: float, max_unadmitted: int, error: Callable[[str, str], Exception]
) -> tuple[float, int]:
    """A transport's `hello_timeout` and `max_unadmitted` options, checked.

    `error(option, problem)` makes the transport's own error for a bad one.
    """
    if not hello_timeout > 0:
        raise error("hello_timeout", f"must be a positive number, not {hello_timeout}")
    if isinstance(max_unadmitted, bool) or not (
        isinstance(max_unadmitted, int) and max_unadmitted > 0
    ):
        raise error("max_unadmitted", f"must be a positive integer, not {max_unadmitted!r}")
    return float(hello_timeout), max_unadmitted


class UnadmittedLink(Protocol):
    """What `Admission` needs of a connection."""

    @property
    def peer(self) -> str:
        """Where the link comes from, for messages."""
        ...

    admitted: bool
    on_admitted: list[Callable[[Any], None]]
    """Called with the link when its owner admits it."""
    on_lost: list[Callable[[Any], None]]
    """Called with the link when it closes."""

    def refuse(self, why: BaseException) -> None:
        """Close the link now, telling its owner `why`."""
        ...


class Admission:
    """One listener's unadmitted links, oldest first.

    `name` (the transport's, "tcp") starts each message; `log` is the
    transport's own logger, so its users find the warnings where its others are.
    """

    def __init__(
        self, name: str, log: logging.Logger, url: str, hello_timeout: float, max_unadmitted: int
    ) -> None:
        self._log = log
        self._name = name
        self._url = url
        self._hello_timeout = hello_timeout
        self._max = max_unadmitted
        self._waiting: OrderedDict[UnadmittedLink, asyncio.TimerHandle] = OrderedDict()
        self._evicted = 0

    def add(self, conn: UnadmittedLink) -> None:
        """Track a just-accepted link: it has `hello_timeout` seconds to be admitted."""
        while len(self._waiting) >= self._max:
            oldest, timer = self._waiting.popitem(last=False)
            timer.cancel()
            self._evicted += 1
            if self._evicted == 1:  # one line per flood, not one per link
                self._log.warning(
                    "%s: %s holds %d links that have not said hello (max_unadmitted); "
                    "closing the oldest ones, starting with %s",
                    self._name,
                    self._url,
                    self._max,
                    oldest.peer,
                )
            oldest.refuse(
                CellError(
                    f"{self._name}: closed the link from {oldest.peer}: {self._max} newer links "
                    "had not said hello either"
                )
            )
        timer = asyncio.get_running_loop().call_later(self._hello_timeout, self._expire, conn)
        self._waiting[conn] = timer
        conn.on_admitted.append(self._forget)
        conn.on_lost.append(self._forget)

    def _forget(self, conn: UnadmittedLink) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if not self._waiting:
            self._evicted = 0

    def _expire(self, conn: UnadmittedLink) -> None:
        self._forget(conn)
        if conn.admitted:
            return
        why = f"it did not say hello within {self._hello_timeout:g} s"
        self._log.warning("%s: closed the connection from %s: %s", self._name, conn.peer, why)
        conn.refuse(CellError(f"{self._name}: closed the link from {conn.peer}: {why}"))
