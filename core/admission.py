"""A listener's unadmitted links: the hello timeout and the cap, for any transport.

See "Admission" in `fl_core.spec.transport`: until the cell admits a link,
the transport closes it when it has not said hello within `hello_timeout`,
and holds at most `max_unadmitted` such links per listener, closing the
oldest when one more arrives (so a flood cannot lock out a real peer that
says hello within milliseconds). Transports built on an asyncio loop can
give each listener one `Admission` and have their connections meet
`UnadmittedLink`; it is touched only on the loop thread. Their connections
can derive from `LoopConnection`, which has the `admit` / `refuse` half of
that and the loop plumbing it needs, so each transport writes only its wire.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from fl_core.errors import CellError
from fl_core.spec.transport import Connection

__all__ = ["Admission", "LoopConnection", "UnadmittedLink", "check_limits"]


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


class LoopConnection(Connection):
    """A `Connection` whose link lives on an asyncio loop: admission and loop plumbing.

    It is the `UnadmittedLink` an `Admission` tracks. A subclass passes its
    loop and whether the link starts admitted (an accepted one does not),
    implements `abort` and `lost`, and has `lost` report `refusal` when there
    is one, so the link's owner learns why it was refused.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, admitted: bool) -> None:
        self._loop = loop
        self.admitted = admitted
        """False until the owner of an accepted link calls `admit`."""
        self.on_admitted: list[Callable[[Any], None]] = []
        """Callbacks `f(conn)`, on the loop thread, once an accepted link is admitted."""
        self.on_lost: list[Callable[[Any], None]] = []
        """Callbacks `f(conn)` the transport uses to forget this connection."""
        self._refusal: BaseException | None = None

    @property
    def refusal(self) -> BaseException | None:
        """Why the link was refused (`refuse`), if it was."""
        return self._refusal

    def admit(self) -> None:
        """Lift the pre-hello limits (see `Connection.admit`); idempotent."""
        if self.admitted:
            return
        self.admitted = True  # read on the loop thread before each frame
        self._call_on_loop(self._admitted_on_loop)

    def _admitted_on_loop(self) -> None:
        for admitted in self.on_admitted:
            admitted(self)

    def refuse(self, why: BaseException) -> None:
        """End the link now (on the loop thread); its owner's `on_close` gets `why`."""
        if self._refusal is None:
            self._refusal = why
        self.abort()

    @abstractmethod
    def abort(self) -> None:
        """End the link now, on the loop thread, whatever is queued; `lost` follows."""

    @abstractmethod
    def lost(self, exc: BaseException | None) -> None:
        """The link is gone (on the loop thread): forget it and tell its owner; idempotent.

        `exc` is why (None for an orderly close); a transport that stops calls
        it for links that outlived their protocol.
        """

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call_on_loop(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop: now if this is the loop's thread, else soon."""
        if self._on_loop_thread():
            callback()
            return
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop is gone, and the link with it
