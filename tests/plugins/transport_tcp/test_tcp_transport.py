"""The tcp transport in plaintext: frames, order, closing, hostile peers, and cells over it."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.errors import CellError, ConfigError, TargetUnreachableError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.serialization.envelope import (
    MAGIC,
    MAX_HEADER_SIZE,
    BodyKind,
    encode_frame_head,
    encode_prefix,
)
from fl_core.spec.transport import Connection, Frame, Transport
from fl_plugins.transport_tcp import hooks
from fl_plugins.transport_tcp.transport import TcpTransport

WAIT = 10.0
pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
"""Bounds every wait; reached only when something is broken."""
MIB = 1024 * 1024


class Peer:
    """Records what a connection delivers, and lets a test wait for it."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closes: list[BaseException | None] = []
        self._cond = threading.Condition()

    def attach(self, conn: Connection) -> Connection:
        conn.start(self._frame, self._close)
        return conn

    def _frame(self, frame: Frame) -> None:
        with self._cond:
            self.frames.append(frame)
            self._cond.notify_all()

    def _close(self, exc: BaseException | None) -> None:
        with self._cond:
            self.closes.append(exc)
            self._cond.notify_all()

    def wait_for(self, what: Callable[[], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(what, WAIT), "timed out"

    def wait_frames(self, n: int) -> list[Frame]:
        self.wait_for(lambda: len(self.frames) >= n)
        return self.frames

    def wait_closed(self) -> BaseException | None:
        self.wait_for(lambda: bool(self.closes))
        return self.closes[0]


class Server:
    """A listener's owner: starts every accepted connection with its own Peer."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.accepted: list[Connection] = []
        self._cond = threading.Condition()

    def on_connection(self, conn: Connection) -> None:
        conn.admit()  # as a cell does once the peer said hello
        peer = Peer()
        peer.attach(conn)
        with self._cond:
            self.peers.append(peer)
            self.accepted.append(conn)
            self._cond.notify_all()

    def wait_accepted(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.accepted) >= n, WAIT)


@pytest.fixture
def transport() -> Iterator[TcpTransport]:
    transport = TcpTransport()
    yield transport
    transport.close()


def linked(transport: TcpTransport) -> tuple[Server, Peer, Connection, str]:
    server = Server()
    url = transport.listen("tcp://127.0.0.1:0", server.on_connection).url
    client = Peer()
    conn = client.attach(transport.connect(url, timeout=WAIT))
    server.wait_accepted(1)
    return server, client, conn, url


def raw_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=WAIT)


def assert_still_serves(transport: TcpTransport, url: str) -> None:
    """A fresh, well-behaved connection to `url` still gets its frames through."""
    server = Server()
    other = transport.listen("tcp://127.0.0.1:0", server.on_connection)
    try:
        client = Peer()
        conn = client.attach(TcpTransport.connect(transport, url, timeout=WAIT))
        conn.send(Frame({"after": "hostile"}, b"ok"))
        conn.close()
        assert client.wait_closed() is None
    finally:
        other.close()


# --- the hook and options ---------------------------------------------------------


def _registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("transport_tcp", hooks)]).registry()


def test_the_hook_registers_tcp_and_the_factory_builds_a_transport() -> None:
    registry = _registry()
    assert registry.names("transport") == {"tcp": "transport_tcp"}
    transport = registry.create("transport", "tcp", {"send_timeout": 5}, expect=Transport)
    try:
        assert isinstance(transport, TcpTransport)
        assert transport.schemes == ("tcp",)
        assert not transport.carries_objects
    finally:
        transport.close()


def test_the_admission_limits_are_job_options() -> None:
    options = {"hello_timeout": 2.5, "max_unadmitted": 16}
    _registry().create("transport", "tcp", options, expect=Transport).close()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"port": 1}, "port"),
        ({"tls": "yes"}, "tls"),
        ({"tls": True}, "certfile"),
        ({"hello_timeout": -1.0}, "hello_timeout"),
        ({"max_unadmitted": 0}, "max_unadmitted"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _registry().create("transport", "tcp", options)
    assert info.value.key == f"components.transport.options.{key}"


# --- frames ---------------------------------------------------------------------------


def test_port_zero_reports_the_bound_port(transport: TcpTransport) -> None:
    listener = transport.listen("tcp://127.0.0.1:0", Server().on_connection)
    host, port = listener.url.removeprefix("tcp://").rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    raw_socket(listener.url).close()  # something really listens there
    listener.close()


@pytest.mark.parametrize("size", [0, 1, 10 * MIB])
def test_frames_travel_both_ways_with_headers_and_body(transport: TcpTransport, size: int) -> None:
    server, client, conn, _ = linked(transport)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    conn.send(Frame({"k": "to-server", "n": str(size)}, body))
    got = server.peers[0].wait_frames(1)[0]
    assert got.headers == {"k": "to-server", "n": str(size)}
    assert isinstance(got.body, bytearray) and got.body == body
    server.accepted[0].send(Frame({"k": "to-client"}, memoryview(body)))
    back = client.wait_frames(1)[0]
    assert back.headers == {"k": "to-client"} and back.body == body


def test_a_none_body_arrives_as_none_and_objects_are_refused(transport: TcpTransport) -> None:
    server, _, conn, _ = linked(transport)
    conn.send(Frame({"empty": "yes"}, None))
    assert server.peers[0].wait_frames(1)[0].body is None
    with pytest.raises(CellError, match="bytes-like"):
        conn.send(Frame({}, {"an": "object"}))


def test_a_thousand_frames_arrive_in_order(transport: TcpTransport) -> None:
    server, _, conn, _ = linked(transport)
    for i in range(1000):
        conn.send(Frame({"i": str(i)}, i.to_bytes(4, "big") * (i % 7)))
    frames = server.peers[0].wait_frames(1000)
    assert [f.headers["i"] for f in frames] == [str(i) for i in range(1000)]
    assert all(f.body == i.to_bytes(4, "big") * (i % 7) for i, f in enumerate(frames))


def test_frames_sent_on_the_loop_thread_from_a_handler_arrive(transport: TcpTransport) -> None:
    echoed = Peer()

    def on_connection(conn: Connection) -> None:
        conn.start(lambda f: conn.send(Frame({"echo": f.headers["n"]}, f.body)), lambda e: None)

    url = transport.listen("tcp://127.0.0.1:0", on_connection).url
    conn = echoed.attach(transport.connect(url, timeout=WAIT))
    for n in range(50):
        conn.send(Frame({"n": str(n)}, b"x" * n))
    assert [f.headers["echo"] for f in echoed.wait_frames(50)] == [str(n) for n in range(50)]


def test_a_slow_reader_blocks_the_sender_instead_of_growing_memory() -> None:
    transport = TcpTransport(send_timeout=0.5)
    deaf = socket.create_server(("127.0.0.1", 0))  # accepts (in the kernel), never reads
    try:
        conn = transport.connect(f"tcp://127.0.0.1:{deaf.getsockname()[1]}", timeout=WAIT)
        conn.start(lambda f: None, lambda e: None)
        sent = 0
        with pytest.raises(TargetUnreachableError, match="has not read"):
            for sent in range(1, 201):  # noqa: B007 - read after the loop
                conn.send(Frame({}, bytes(MIB)))
        assert sent < 200  # it blocked long before 200 MiB were buffered
    finally:
        deaf.close()
        transport.close()


# --- connecting and closing --------------------------------------------------------


def test_connecting_to_a_closed_port_fails_after_its_timeout(transport: TcpTransport) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started = time.monotonic()
    with pytest.raises(TargetUnreachableError) as info:
        transport.connect(f"tcp://127.0.0.1:{port}", timeout=0.5)
    assert 0.3 <= time.monotonic() - started < 5.0  # it retried, then gave up
    assert info.value.fqcn == f"tcp://127.0.0.1:{port}"


def test_connect_retries_until_the_listener_appears(transport: TcpTransport) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = Server()
    timer = threading.Timer(
        0.3, lambda: transport.listen(f"tcp://127.0.0.1:{port}", server.on_connection)
    )
    timer.start()
    try:
        conn = transport.connect(f"tcp://127.0.0.1:{port}", timeout=WAIT)
        conn.start(lambda f: None, lambda e: None)
        server.wait_accepted(1)
    finally:
        timer.join()


def test_peer_close_calls_on_close_once_and_send_after_close_raises(
    transport: TcpTransport,
) -> None:
    server, client, conn, url = linked(transport)
    server.accepted[0].close()
    assert client.wait_closed() is None
    assert server.peers[0].wait_closed() is None
    with pytest.raises(TargetUnreachableError, match=url):
        conn.send(Frame({}, b"late"))
    conn.close()  # idempotent
    # A second on_close would come from the loop thread. `listen` is served on
    # that thread after everything queued before it, so once it returns any
    # such call has happened.
    transport.listen("tcp://127.0.0.1:0", Server().on_connection).close()
    assert client.closes == [None] and server.peers[0].closes == [None]


def test_transport_close_ends_every_link_and_the_thread() -> None:
    transport = TcpTransport()
    server, client, conn, _ = linked(transport)
    transport.close()
    assert client.closes and server.peers[0].closes
    assert not [t for t in threading.enumerate() if t.name == "fl-tcp-loop"]
    with pytest.raises(CellError):
        conn.send(Frame({}, b"x"))


def test_a_bad_url_is_a_cell_error(transport: TcpTransport) -> None:
    with pytest.raises(CellError, match="tcp://HOST:PORT"):
        transport.listen("udp://127.0.0.1:0", Server().on_connection)


# --- hostile input ----------------------------------------------------------------------


def _prefix(header_size: int) -> bytes:
    return struct.pack("!4sII", MAGIC, header_size, 0)


HOSTILE = {
    "garbage": (b"\x00\x01GET / HTTP/1.1\r\n\r\n" * 4, "bad magic"),
    "bad magic": (b"FLC9" + bytes(8), "bad magic"),
    "oversized header": (_prefix(MAX_HEADER_SIZE + 1), "header too large"),
    "oversized body": (
        encode_frame_head({}, BodyKind.BYTES, 17 * MIB, max_body_size=32 * MIB),
        "body too large",
    ),
    "truncated body": (encode_frame_head({}, BodyKind.BYTES, 100) + b"only ten b", "truncated"),
    "truncated head": (encode_prefix(40) + b"abc", "truncated"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_closes_only_that_connection(
    transport: TcpTransport, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    data, problem = HOSTILE[case]
    server = Server()
    url = transport.listen("tcp://127.0.0.1:0", server.on_connection).url
    caplog.set_level(logging.WARNING, logger="fl_plugins.transport_tcp")
    sock = raw_socket(url)
    local = "{}:{}".format(*sock.getsockname())
    sock.sendall(data)
    if case.startswith("truncated"):
        sock.shutdown(socket.SHUT_WR)
    server.wait_accepted(1)
    error = server.peers[0].wait_closed()
    assert isinstance(error, CellError) and problem in str(error)
    assert sock.recv(1) == b""  # the server closed it
    sock.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert local in warnings[0].getMessage() and problem in warnings[0].getMessage()
    assert server.peers[0].frames == []
    assert_still_serves(transport, url)


# --- cells over tcp ----------------------------------------------------------------------


def test_a_cell_tree_does_request_and_reply_over_tcp() -> None:
    transport = TcpTransport()
    resources = CellResources()
    server = Cell("server", transport, resources)
    sites = [Cell(f"site-{i}", transport, resources) for i in (1, 2)]
    try:
        url = server.listen("tcp://127.0.0.1:0")
        for site in sites:
            site.connect_parent(url, timeout=WAIT)

            def shout(message: Message, name: str = site.fqcn) -> bytes:
                assert isinstance(message.payload, bytes | bytearray)
                return name.encode() + b":" + bytes(message.payload).upper()

            site.register_handler(Channel.AUX_COMMUNICATION, "shout", shout)
        assert server.children() == ["site-1", "site-2"]
        for site in sites:
            reply = server.request(
                site.fqcn, Channel.AUX_COMMUNICATION, "shout", b"hello", timeout=WAIT
            )
            assert reply.payload == site.fqcn.encode() + b":HELLO"
        # site-1 -> site-2 is relayed by the server.
        reply = sites[0].request("site-2", Channel.AUX_COMMUNICATION, "shout", b"hi", timeout=WAIT)
        assert reply.payload == b"site-2:HI"
    finally:
        for cell in (*sites, server):
            cell.close()
        resources.close()
        transport.close()
