"""A cell's link to its parent: the hello handshake, and reconnecting when it drops.

A child introduces itself with a hello frame naming its FQCN; the parent
answers hello_ok (the name is now routed to this link) or hello_rejected
with the reason. When an established parent link closes and the cell is
not closing, a `ParentLink` with `reconnect=True` keeps trying, with
exponential backoff, on one thread of its own, until it is back: routing
through the parent then resumes by itself. That thread ends when the link
is back or the cell closes.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Final

from fl_core.cell.message import Header
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.spec.transport import Frame

if TYPE_CHECKING:
    from fl_core.cell.cell import Cell

log = logging.getLogger("fl_core.cell")

CONTROL: Final = "ctl"
HELLO: Final = "hello"
HELLO_OK: Final = "hello_ok"
HELLO_REJECTED: Final = "hello_rejected"
DIRECT: Final = "direct"
"""Set in a hello that opens a direct link rather than joining the tree."""
DIRECT_TOKEN: Final = "direct_token"
"""What the far end's verifier checks (see `Cell.accept_direct`)."""

BACKOFF_START: Final = 0.05
BACKOFF_MAX: Final = 2.0


class ParentLink:
    """Connects `cell` to the parent at `url`, and reconnects after a loss if asked to."""

    def __init__(self, cell: Cell, url: str, timeout: float, reconnect: bool) -> None:
        self._cell = cell
        self.url = url
        self._timeout = timeout
        self._reconnect = reconnect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        """One attempt: connect and say hello; raises as `Cell.connect_parent` documents."""
        cell, url, timeout = self._cell, self.url, self._timeout
        conn = cell.transport.connect(url, timeout)
        answer: Future[Frame] = Future()
        # The answer and the timeout race (the answer may arrive on the
        # transport's thread while this one gives up): whichever takes this
        # lock first decides. A hello_ok after giving up must not make the
        # closed link the parent (a link left behind, and its close would
        # start a reconnect thread that outlives the failed call).
        decided = threading.Lock()

        def on_frame(frame: Frame) -> None:
            control = frame.headers.get(CONTROL)
            if control in (HELLO_OK, HELLO_REJECTED):
                with decided:
                    if answer.done():
                        return  # too late, or a second answer
                    if control == HELLO_OK:
                        # Before anything else arrives on this link: the parent may
                        # send a request right after accepting us, and its reply
                        # must find the way back up.
                        cell._set_parent(conn)
                    answer.set_result(frame)
                return
            cell._on_frame(conn, frame, from_parent=True)

        conn.receive_into(cell._streams.body_buffer_for(conn))
        conn.start(on_frame, lambda exc: cell._on_link_closed(conn, exc, parent=True))
        conn.send(Frame({CONTROL: HELLO, Header.ORIGIN: cell.fqcn}))
        try:
            frame = answer.result(timeout)
        except TimeoutError:
            with decided:
                gave_up = answer.cancel()
            if gave_up:
                conn.close()
                raise TargetUnreachableError(
                    url, f"no answer to hello within {timeout:g} s"
                ) from None
            frame = answer.result()  # it came as the wait ended
        if frame.headers.get(CONTROL) == HELLO_REJECTED:
            conn.close()
            raise CellError(
                f"{url} refused cell {cell.fqcn!r}: {frame.headers.get(Header.ERROR, '')}"
            )

    def lost(self) -> None:
        """The established link closed: start reconnecting (if asked to and not closing)."""
        if not self._reconnect or self._stop.is_set():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"fl-reconnect-{self._cell.fqcn}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        delay = BACKOFF_START
        log.warning("%s: lost its parent at %s; reconnecting", self._cell.fqcn, self.url)
        while not self._stop.wait(delay):
            try:
                self.connect()
            except CellError as exc:
                log.info("%s: reconnecting to %s failed: %s", self._cell.fqcn, self.url, exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            log.warning("%s: reconnected to its parent at %s", self._cell.fqcn, self.url)
            return

    def close(self) -> None:
        """Stop reconnecting; waits for the reconnecting thread to end."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._timeout + 5.0)


def connect_direct(cell: Cell, url: str, timeout: float, token: str = "") -> str:
    """Open a direct link from `cell` to the cell listening at `url`; returns its name.

    The two cells need not be parent and child: messages between them then
    take this link instead of the tree, and the cells on the tree's path
    never see them. Only the two ends use it: each end takes from it only
    what the other end sends to it (no relaying through a direct link, and
    no one speaks for anyone else over it). The far end admits it only if
    it accepts direct links and its verifier admits this cell's name with
    `token`, and neither end takes a name from its own subtree or one of its
    ancestors. If the link closes, routing falls back to the tree; it is not
    reconnected.
    """
    conn = cell.transport.connect(url, timeout)
    answer: Future[Frame] = Future()
    decided = threading.Lock()
    state: dict[str, str] = {}

    def on_frame(frame: Frame) -> None:
        control = frame.headers.get(CONTROL)
        if control in (HELLO_OK, HELLO_REJECTED) and not state:
            with decided:
                if answer.done():
                    return
                if control == HELLO_OK:
                    name = frame.headers.get(Header.ORIGIN, "")
                    if not cell._add_direct(name, conn):
                        frame = Frame({CONTROL: HELLO_REJECTED, Header.ERROR: f"bad peer {name!r}"})
                    else:
                        state["name"] = name
                answer.set_result(frame)
            return
        peer = state.get("name")
        if peer is None:
            return  # nothing is taken before the far end introduced itself
        cell._on_direct_frame(conn, peer, frame)

    conn.receive_into(cell._streams.body_buffer_for(conn))
    conn.start(on_frame, lambda exc: cell._on_link_closed(conn, exc, parent=False))
    conn.send(Frame({CONTROL: HELLO, Header.ORIGIN: cell.fqcn, DIRECT: "1", DIRECT_TOKEN: token}))
    try:
        frame = answer.result(timeout)
    except TimeoutError:
        with decided:
            gave_up = answer.cancel()
        if gave_up:
            conn.close()
            raise TargetUnreachableError(url, f"no answer to hello within {timeout:g} s") from None
        frame = answer.result()
    if frame.headers.get(CONTROL) == HELLO_REJECTED:
        conn.close()
        raise CellError(
            f"{url} refused a direct link from {cell.fqcn!r}: {frame.headers.get(Header.ERROR, '')}"
        )
    return state["name"]
