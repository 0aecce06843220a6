"""The transport contract: one test suite that every `Transport` must pass.

Subclass `TransportContract` in a test module, set `listen_url` to a URL that
binds a fresh address each time (port 0, an empty name), and name the
transport as a job config would: `component` (its registered name) and
`plugin` (the entry-point name of the plugin that registers it, or
`(name, hooks_module)` for one not installed). The suite then builds every
transport through that plugin's registered factory, as the runtime does, so
the hook and the factory's options are under contract too. pytest runs every
test of the suite against it::

    from fl_core.testing import TransportContract, HostileInputContract

    class TestMyTransport(TransportContract, HostileInputContract):
        listen_url = "mytcp://127.0.0.1:0"
        component = "mytcp"
        plugin = "my_plugin"

Overriding the `transport_factory` fixture (a callable `(**options) ->
Transport`) builds transports another way. The suite closes every transport
it builds. Bodies are `bytes`, which every transport must carry; what
`Transport.carries_objects` promises is read from the transport, not
configured. Class attributes scale the suite down for slow or limited
transports: `large_payload_bytes`, `ordered_frames`,
`concurrent_requests`, `wait` (the bound of every wait) and `unreachable_url`.
To mark one inherited test (`xfail`, `skip`), override it in the subclass with
the marker and call `super()`.

The helpers (`open_link`, `FrameRecorder`, `Acceptor`, `build_cell_tree`,
`bytes_echo`, `deferring`) are public, for a transport's own extra tests;
they live in `fl_core.testing.transport_links`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ClassVar

import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.message import Message
from fl_core.errors import (
    CellError,
    NoHandlerError,
    RequestTimeoutError,
    TargetUnreachableError,
)
from fl_core.spec.transport import Connection, Frame, Transport
from fl_core.testing.registered import TransportUnderTest
from fl_core.testing.stream_contract import StreamContract, wait_until
from fl_core.testing.transport_links import (
    AUX,
    TREE,
    Acceptor,
    CellTree,
    FrameRecorder,
    Link,
    build_cell_tree,
    bytes_echo,
    call_within,
    deferring,
    open_link,
    outcome,
)

# The helpers live in transport_links; they are re-exported here, where
# transport tests have always imported them from.
__all__ = [
    "AUX",
    "TREE",
    "Acceptor",
    "CellTree",
    "FrameRecorder",
    "Link",
    "TransportContract",
    "build_cell_tree",
    "bytes_echo",
    "deferring",
    "open_link",
]


HEADERS = {"k": "v", "empty": "", "unicode": "grüße ✓", "spaces": "a b  c", "n": "42"}


# --- the suite ---------------------------------------------------------------------


class TransportContract(TransportUnderTest, StreamContract):
    """Tests every transport must pass; subclass it as `Test...` (see the module docstring).

    The streaming tests come from `StreamContract`.
    """

    listen_url: ClassVar[str] = ""
    """A URL that binds a fresh address on each `listen` ("tcp://127.0.0.1:0")."""
    large_payload_bytes: ClassVar[int] = 8 * 2**20
    """The body size of the large-frame test."""
    ordered_frames: ClassVar[int] = 500
    """How many frames the ordering test sends from one thread."""
    concurrent_requests: ClassVar[int] = 200
    """How many requests the cell-level load test has in flight at once."""
    wait: ClassVar[float] = 5.0
    """Bounds every wait; reached only when something is broken."""
    unreachable_url: ClassVar[str | None] = None
    """A URL nobody listens on; by default, the URL of a listener just closed."""
    accepts_remote_peers: ClassVar[bool] = True
    """Whether other processes can reach this transport's listeners. If so, the
    test class must also run `HostileInputContract` (admission and hostile
    bytes); only a transport whose peers all live in this process (the
    in-process one) declares False, and is exempt."""

    @pytest.fixture
    def transport(self, transport_factory: Callable[[], Transport]) -> Iterator[Transport]:
        """A fresh transport, closed after the test."""
        if not self.listen_url:
            pytest.fail(f"{type(self).__name__} must set listen_url")
        transport = transport_factory()
        yield transport
        transport.close()

    @pytest.fixture
    def link(self, transport: Transport) -> Iterator[Link]:
        """One started connection; both ends are closed after the test."""
        link = open_link(transport, self.listen_url, self.wait)
        yield link
        link.client.close()
        link.server.close()
        link.listener.close()

    @pytest.fixture
    def tree(self, transport: Transport) -> Iterator[CellTree]:
        """The cell tree of `build_cell_tree` over the transport."""
        tree = build_cell_tree(transport, self.listen_url, self.wait)
        yield tree
        tree.close()

    # --- transport level ---------------------------------------------------------

    def test_a_transport_for_remote_peers_runs_the_hostile_input_contract(self) -> None:
        from fl_core.testing.transport_contract_security import HostileInputContract

        if self.accepts_remote_peers and not isinstance(self, HostileInputContract):
            pytest.fail(
                f"{type(self).__name__} tests a transport other processes can reach: mix in "
                "HostileInputContract too, or set accepts_remote_peers = False if they cannot"
            )

    def test_admit_is_idempotent_on_both_ends(self, link: Link) -> None:
        for _ in range(2):
            link.server.admit()  # the acceptor admitted it already
            link.client.admit()  # dialed: admitted from the start
        link.client.send(Frame({"n": "1"}, b"up"))
        link.server.send(Frame({"n": "2"}, b"down"))
        assert [f.headers for f in link.server_seen.wait_frames(1, self.wait)] == [{"n": "1"}]
        assert [f.headers for f in link.client_seen.wait_frames(1, self.wait)] == [{"n": "2"}]

    def test_listen_reports_a_url_to_connect_to(self, transport: Transport) -> None:
        acceptor = Acceptor()
        listener = transport.listen(self.listen_url, acceptor)
        try:
            assert listener.url.split("://")[0] in transport.schemes
            conn = transport.connect(listener.url, self.wait)
            conn.start(lambda frame: None, lambda exc: None)
            accepted, _ = acceptor.next(self.wait)
            conn.close()
            accepted.close()
        finally:
            listener.close()

    @pytest.mark.parametrize("size", ["empty", "small", "large"])
    def test_frames_flow_both_ways_with_headers_and_bodies(self, link: Link, size: str) -> None:
        length = {"empty": 0, "small": 11, "large": self.large_payload_bytes}[size]
        body = (bytes(range(256)) * (length // 256 + 1))[:length]
        link.client.send(Frame(dict(HEADERS, way="up"), body))
        link.server.send(Frame(dict(HEADERS, way="down"), body[::-1]))
        (up,) = link.server_seen.wait_frames(1, self.wait)
        (down,) = link.client_seen.wait_frames(1, self.wait)
        assert up.headers == dict(HEADERS, way="up")
        assert down.headers == dict(HEADERS, way="down")
        assert isinstance(up.body, bytes | bytearray | memoryview)
        assert isinstance(down.body, bytes | bytearray | memoryview)
        assert bytes(up.body) == body
        assert bytes(down.body) == body[::-1]

    def test_bodies_are_what_carries_objects_promises(self, link: Link) -> None:
        # Read from the transport, never configured by the subclass.
        body = {"weights": [1.0, 2.0]} if link.transport.carries_objects else b"\x00\xff"
        link.client.send(Frame({}, body))
        (frame,) = link.server_seen.wait_frames(1, self.wait)
        if isinstance(body, dict):
            assert frame.body is body  # handed over by reference, never encoded
        else:
            assert isinstance(frame.body, bytes | bytearray | memoryview)
            assert bytes(frame.body) == body

    def test_order_is_kept_for_frames_from_one_thread(self, link: Link) -> None:
        count = self.ordered_frames
        for index in range(count):
            link.client.send(Frame({"seq": str(index)}, str(index).encode()))
            link.server.send(Frame({"seq": str(index)}, str(index).encode()))
        for seen in (link.server_seen, link.client_seen):
            frames = seen.wait_frames(count, self.wait)
            assert [f.headers["seq"] for f in frames] == [str(i) for i in range(count)]
            assert [bytes(f.body) for f in frames] == [str(i).encode() for i in range(count)]  # type: ignore[call-overload]

    @pytest.mark.parametrize("closing_end", ["connecting", "accepting"])
    def test_on_close_is_called_once_on_both_ends(self, link: Link, closing_end: str) -> None:
        closing, other = (link.client, link.server)
        if closing_end == "accepting":
            closing, other = other, closing
        closing.close()
        assert link.client_seen.wait_closed(self.wait) == [None]
        assert link.server_seen.wait_closed(self.wait) == [None]
        closing.close()  # idempotent
        other.close()  # already closed by its peer: no second on_close
        assert link.client_seen.closes == [None]
        assert link.server_seen.closes == [None]

    def test_send_after_close_raises_cell_error_on_both_ends(self, link: Link) -> None:
        link.client.close()
        link.client_seen.wait_closed(self.wait)
        link.server_seen.wait_closed(self.wait)
        for end in (link.client, link.server):
            with pytest.raises(CellError):  # TargetUnreachableError is one too
                end.send(Frame({"late": "1"}, b"late"))
        assert link.server_seen.frames == [] and link.client_seen.frames == []

    def test_connecting_to_nobody_is_unreachable_within_the_timeout(
        self, transport: Transport
    ) -> None:
        url = self.unreachable_url
        if url is None:
            listener = transport.listen(self.listen_url, Acceptor())
            url = listener.url
            listener.close()
        timeout = min(1.0, self.wait)
        result = call_within(timeout + self.wait, lambda: transport.connect(url, timeout))
        if isinstance(result, Connection):
            result.close()
        assert isinstance(result, TargetUnreachableError), result

    def test_two_fresh_listeners_get_different_urls(self, transport: Transport) -> None:
        first, second = Acceptor(), Acceptor()
        listeners = [transport.listen(self.listen_url, first)]
        listeners.append(transport.listen(self.listen_url, second))
        try:
            assert listeners[0].url != listeners[1].url
            conns = [transport.connect(listener.url, self.wait) for listener in listeners]
            for conn in conns:
                FrameRecorder().start(conn)
            # Each URL leads to its own listener.
            accepted = [first.next(self.wait)[0], second.next(self.wait)[0]]
            assert first.accepted.empty() and second.accepted.empty()
            for conn in conns + accepted:
                conn.close()
        finally:
            for listener in listeners:
                listener.close()

    def test_a_closed_listener_refuses_new_links_but_keeps_old_ones(
        self, transport: Transport, link: Link
    ) -> None:
        link.listener.close()
        link.listener.close()  # idempotent
        result = call_within(
            2 * self.wait, lambda: transport.connect(link.listener.url, min(1.0, self.wait))
        )
        if isinstance(result, Connection):
            result.close()
        assert isinstance(result, TargetUnreachableError), result
        link.client.send(Frame({"still": "up"}, b"1"))
        link.server.send(Frame({"still": "down"}, b"2"))
        assert link.server_seen.wait_frames(1, self.wait)[0].headers == {"still": "up"}
        assert link.client_seen.wait_frames(1, self.wait)[0].headers == {"still": "down"}

    def test_transport_close_leaves_no_thread_behind(
        self, transport_factory: Callable[[], Transport]
    ) -> None:
        before = set(threading.enumerate())
        transport = transport_factory()
        try:
            link = open_link(transport, self.listen_url, self.wait)
            link.client.send(Frame({"n": "1"}, b"x"))
            link.server.send(Frame({"n": "2"}, b"y"))
            link.server_seen.wait_frames(1, self.wait)
            link.client_seen.wait_frames(1, self.wait)
        finally:
            transport.close()
        leftover = [t for t in threading.enumerate() if t not in before]
        deadline = time.monotonic() + self.wait
        for thread in leftover:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert [t.name for t in leftover if t.is_alive()] == []
        # The links may be ended already; closing them now is still safe, once each.
        link.client.close()
        link.server.close()
        assert len(link.client_seen.closes) <= 1 and len(link.server_seen.closes) <= 1
        transport.close()  # idempotent

    # --- cell level ----------------------------------------------------------------

    @pytest.mark.parametrize(
        ("source", "target"),
        [
            ("server.j", "server"),  # child -> parent
            ("server", "site-1.j"),  # root -> grandchild
            ("site-1.j", "site-1"),  # child -> parent, one level down
            ("site-1", "site-1.j"),  # parent -> child
            ("site-1.j", "server.j"),  # across subtrees
            ("server.j", "site-1.j"),  # and back
        ],
    )
    def test_cells_request_and_reply_in_each_direction(
        self, tree: CellTree, source: str, target: str
    ) -> None:
        reply = tree[source].request(target, AUX, "echo", b"\x00payload", timeout=self.wait)
        assert reply.payload == f"{target}|{source}|".encode() + b"\x00payload"
        assert (reply.origin, reply.destination) == (target, source)

    def test_cells_fire_and_forget(self, tree: CellTree) -> None:
        received: queue.Queue[Message] = queue.Queue()
        tree["server.j"].register_handler(AUX, "log", lambda m: received.put(m))
        tree["site-1.j"].fire("server.j", AUX, "log", b"loss=0.25")
        message = received.get(timeout=self.wait)
        assert (message.payload, message.origin) == (b"loss=0.25", "site-1.j")

    def test_cells_broadcast_gets_each_reply_or_error(self, tree: CellTree) -> None:
        tree["site-1.j"].register_handler(AUX, "only-j", lambda m: b"from site-1.j")
        results = tree["server.j"].broadcast(
            ["site-1.j", "site-1", "site-9.j"], AUX, "only-j", b"", timeout=self.wait
        )
        reply = results["site-1.j"]
        assert isinstance(reply, Message) and reply.payload == b"from site-1.j"
        assert isinstance(results["site-1"], NoHandlerError)
        assert isinstance(results["site-9.j"], TargetUnreachableError)
        assert set(results) == {"site-1.j", "site-1", "site-9.j"}

    def test_cells_answer_many_concurrent_requests_correctly(self, tree: CellTree) -> None:
        pairs = [("site-1.j", "server.j"), ("server.j", "site-1.j"), ("server", "site-1.j")]

        def send(index: int) -> tuple[int, Future[Message]]:
            source, target = pairs[index % len(pairs)]
            payload = str(index).encode()
            return index, tree[source].request_async(target, AUX, "echo", payload, self.wait)

        with ThreadPoolExecutor(8) as senders:
            sent = list(senders.map(send, range(self.concurrent_requests)))
        for index, future in sent:
            source, target = pairs[index % len(pairs)]
            expected = f"{target}|{source}|{index}".encode()
            assert future.result(self.wait).payload == expected

    def test_cells_see_a_closed_child_as_unreachable_not_as_a_timeout(self, tree: CellTree) -> None:
        requests = deferring(tree["server.j"], "hold")
        future = tree["server"].request_async("server.j", AUX, "hold", b"", timeout=60.0)
        requests.get(timeout=self.wait)
        tree["server.j"].close()
        error = outcome(future, self.wait)
        assert isinstance(error, TargetUnreachableError), error
        assert error.fqcn == "server.j"

    def test_a_request_two_hops_away_fails_promptly_when_its_target_goes(
        self, tree: CellTree
    ) -> None:
        # server.j -> server -> site-1 -> site-1.j: the relay site-1 sees the link close.
        requests = deferring(tree["site-1.j"], "hold")
        future = tree["server.j"].request_async("site-1.j", AUX, "hold", b"", timeout=60.0)
        requests.get(timeout=self.wait)
        tree["site-1.j"].close()
        error = outcome(future, self.wait)
        assert isinstance(error, TargetUnreachableError), error
        assert error.fqcn == "site-1.j"
        assert "toward it closed" in error.detail

    def test_cells_time_out_a_request_nobody_answers(self, tree: CellTree) -> None:
        deferring(tree["server.j"], "never")
        future = tree["site-1.j"].request_async("server.j", AUX, "never", b"", timeout=0.3)
        error = outcome(future, self.wait)
        assert isinstance(error, RequestTimeoutError), error
        assert (error.fqcn, error.topic) == ("server.j", "never")

    def test_a_child_reconnects_and_routing_resumes_when_its_parent_returns(
        self, transport: Transport
    ) -> None:
        parent = Cell("server", transport)
        child = Cell("site-1", transport)
        second: Cell | None = None
        try:
            url = parent.listen(self.listen_url)
            child.register_handler(AUX, "echo", bytes_echo(child))
            child.connect_parent(url, timeout=self.wait)
            parent.close()
            unreachable = outcome(child.request_async("server", AUX, "echo", b"", 60.0), self.wait)
            assert isinstance(unreachable, TargetUnreachableError), unreachable
            second = Cell("server", transport)
            assert second.listen(url) == url
            wait_until(lambda: second.children() == ["site-1"], 4 * self.wait, "a reconnect")
            reply = second.request("site-1", AUX, "echo", b"back", timeout=self.wait)
            assert reply.payload == b"site-1|server|back"
        finally:
            child.close()
            parent.close()
            if second is not None:
                second.close()
