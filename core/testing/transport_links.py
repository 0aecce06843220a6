"""Links and cell trees for testing a transport: the helpers of the transport contract.

`TransportContract` and its companion suites build on these, and a
transport's own extra tests may too (they are re-exported from
`fl_core.testing.transport_contract`): `open_link` starts one connection
with a `FrameRecorder` on each end, `Acceptor` owns a listener's
connections, `build_cell_tree` puts the cells of `TREE` over a transport,
`deferring` holds requests unanswered, and `call_within` / `outcome` bound a
call or a future so that a broken transport fails a test instead of hanging it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import pytest

from fl_core.cell.cell import DEFERRED, Cell, CellResources, Handler
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.spec.transport import Connection, Frame, Listener, Transport

__all__ = [
    "AUX",
    "TREE",
    "Acceptor",
    "CellTree",
    "FrameRecorder",
    "Link",
    "build_cell_tree",
    "bytes_echo",
    "call_within",
    "deferring",
    "open_link",
    "outcome",
]

AUX = Channel.AUX_COMMUNICATION
TREE = ("server", "server.j", "site-1", "site-1.j")
"""The cells `build_cell_tree` makes: server ── server.j, server ── site-1 ── site-1.j."""

T = TypeVar("T")


# --- helpers: raw links ------------------------------------------------------------


class FrameRecorder:
    """Starts a connection and records what it delivers; thread-safe."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closes: list[BaseException | None] = []
        self._changed = threading.Condition()

    def start(self, conn: Connection) -> Connection:
        """Start `conn` with this recorder's handlers and return it."""
        conn.start(self._on_frame, self._on_close)
        return conn

    def _on_frame(self, frame: Frame) -> None:
        with self._changed:
            self.frames.append(frame)
            self._changed.notify_all()

    def _on_close(self, exc: BaseException | None) -> None:
        with self._changed:
            self.closes.append(exc)
            self._changed.notify_all()

    def wait_frames(self, count: int, timeout: float) -> list[Frame]:
        """The first `count` frames; fails the test if they do not arrive in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.frames) >= count, timeout):
                pytest.fail(f"got {len(self.frames)} of {count} frames within {timeout:g} s")
            return self.frames[:count]

    def wait_closed(self, timeout: float) -> list[BaseException | None]:
        """The `on_close` calls so far, once there is one; fails the test if none comes."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self.closes), timeout):
                pytest.fail(f"on_close was not called within {timeout:g} s")
            return list(self.closes)


class Acceptor:
    """A listener's owner: starts each accepted connection with its own recorder.

    By default it admits each connection at once, as a cell does after a
    hello (`Connection.admit`). With `admit=False` it leaves them unadmitted
    and records in `asked` every body size the transport asks its body-buffer
    provider for (the provider offers no buffer, so the transport allocates).
    """

    def __init__(self, *, admit: bool = True) -> None:
        self.accepted: queue.Queue[tuple[Connection, FrameRecorder]] = queue.Queue()
        self.admit = admit
        self.asked: list[int] = []

    def _provide(self, headers: dict[str, str], size: int) -> memoryview | None:
        self.asked.append(size)
        return None

    def __call__(self, conn: Connection) -> None:
        if self.admit:
            conn.admit()
        else:
            conn.receive_into(self._provide)
        recorder = FrameRecorder()
        recorder.start(conn)
        self.accepted.put((conn, recorder))

    def next(self, timeout: float) -> tuple[Connection, FrameRecorder]:
        """The next accepted connection; fails the test if none comes in time."""
        try:
            return self.accepted.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the listener accepted no connection within {timeout:g} s")


@dataclass
class Link:
    """Both ends of one connection, each started with a `FrameRecorder`."""

    transport: Transport
    listener: Listener
    acceptor: Acceptor
    client: Connection
    client_seen: FrameRecorder
    server: Connection
    server_seen: FrameRecorder


def open_link(transport: Transport, listen_url: str, timeout: float = 5.0) -> Link:
    """Listen on `listen_url`, connect to the reported URL, and start both ends."""
    acceptor = Acceptor()
    listener = transport.listen(listen_url, acceptor)
    client_seen = FrameRecorder()
    client = client_seen.start(transport.connect(listener.url, timeout))
    server, server_seen = acceptor.next(timeout)
    return Link(transport, listener, acceptor, client, client_seen, server, server_seen)


def call_within(seconds: float, call: Callable[[], T]) -> T | BaseException:
    """`call()`'s result or exception; fails the test if it has not returned in time."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:
            done.set_exception(exc)

    # A daemon: if the call hangs, the test fails instead of hanging too.
    caller = threading.Thread(target=run, name="contract-call", daemon=True)
    caller.start()
    caller.join(seconds)
    if not done.done():
        pytest.fail(f"the call did not return within {seconds:g} s")
    error = done.exception()
    return error if error is not None else done.result()


# --- helpers: cells ----------------------------------------------------------------


class CellTree:
    """The cells of `TREE` over one transport, sharing one `CellResources`."""

    def __init__(self, transport: Transport, resources: CellResources) -> None:
        self.transport = transport
        self.resources = resources
        self.cells: dict[str, Cell] = {}
        self.urls: dict[str, str] = {}

    def __getitem__(self, name: str) -> Cell:
        return self.cells[name]

    def close(self) -> None:
        """Close the cells, leaves first, then the shared resources (not the transport)."""
        for cell in reversed(list(self.cells.values())):
            cell.close()
        self.resources.close()


def bytes_echo(cell: Cell) -> Handler:
    """A handler answering `b"<this cell>|<origin>|" + payload`."""

    def handler(message: Message) -> object:
        assert isinstance(message.payload, bytes | bytearray | memoryview | None)
        return f"{cell.fqcn}|{message.origin}|".encode() + bytes(message.payload or b"")

    return handler


def build_cell_tree(transport: Transport, listen_url: str, timeout: float = 5.0) -> CellTree:
    """server / server.j / site-1 / site-1.j over `transport`, each with `bytes_echo` on "echo".

    server and site-1 listen on `listen_url` (which must bind a fresh address
    each time); server.j and site-1 connect to server, site-1.j to site-1.
    On failure the cells made so far are closed.
    """
    tree = CellTree(transport, CellResources())
    parents = {"server.j": "server", "site-1": "server", "site-1.j": "site-1"}
    try:
        for name in TREE:
            cell = Cell(name, transport, tree.resources)
            tree.cells[name] = cell
            cell.register_handler(AUX, "echo", bytes_echo(cell))
            if name in parents:
                cell.connect_parent(tree.urls[parents[name]], timeout=timeout)
            if name in ("server", "site-1"):
                tree.urls[name] = cell.listen(listen_url)
    except BaseException:
        tree.close()
        raise
    return tree


def deferring(cell: Cell, topic: str) -> queue.Queue[Message]:
    """Register a handler on `topic` that answers later; the queue gets each request."""
    requests: queue.Queue[Message] = queue.Queue()

    def handler(message: Message) -> object:
        requests.put(message)
        return DEFERRED

    cell.register_handler(AUX, topic, handler)
    return requests


def outcome(future: Future[T], timeout: float) -> T | BaseException:
    try:
        return future.result(timeout)
    except Exception as exc:
        return exc
