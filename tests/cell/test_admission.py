"""Cells that must prove a secret to join: challenge/response at hello, both ways."""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator

import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Header
from fl_core.cell.parent import CONTROL, HELLO, HELLO_OK, HELLO_REJECTED
from fl_core.cell.proof import CHALLENGE, NONCE, PROOF, PROVE, AdmissionRefused, prove
from fl_core.errors import CellError
from fl_core.spec.transport import Connection, Frame
from fl_core.testing.stream_contract import wait_until
from fl_plugins.transport_tcp.transport import TcpTransport

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")

AUX = Channel.AUX_COMMUNICATION
SITE_KEY = bytes.fromhex("5e" * 32)
ADMIN_KEY = bytes.fromhex("a0" * 32)


def _keys(name: str) -> bytes:
    if name == "site-1":
        return SITE_KEY
    if name.startswith("admin-"):
        return ADMIN_KEY
    raise AdmissionRefused(f"{name!r} is not a member of this federation")


@pytest.fixture
def transport() -> Iterator[TcpTransport]:
    transport = TcpTransport()
    try:
        yield transport
    finally:
        transport.close()


@pytest.fixture
def server(transport: TcpTransport) -> Iterator[tuple[Cell, str]]:
    cell = Cell("server", transport)
    cell.require_proof(_keys)
    cell.register_handler(AUX, "who", lambda m: m.origin)
    try:
        yield cell, cell.listen("tcp://127.0.0.1:0")
    finally:
        cell.close()


def _joined(transport: TcpTransport, name: str, url: str, key: bytes | None) -> Cell:
    cell = Cell(name, transport)
    try:
        cell.connect_parent(url, timeout=5, reconnect=False, key=key)
    except BaseException:
        cell.close()
        raise
    return cell


def test_a_child_that_proves_its_key_joins_and_is_routed(
    transport: TcpTransport, server: tuple[Cell, str]
) -> None:
    cell, url = server
    site = _joined(transport, "site-1", url, SITE_KEY)
    try:
        assert cell.children() == ["site-1"]
        assert site.request("server", AUX, "who", None, 10).payload == "site-1"
    finally:
        site.close()


@pytest.mark.parametrize(
    ("name", "key", "problem"),
    [
        ("site-1", None, "asks for a credential that 'site-1' was not given"),
        ("site-1", b"a guess", "did not prove the credential of that name"),
        ("site-1", ADMIN_KEY, "did not prove the credential of that name"),  # another's key
        ("admin-00000000", SITE_KEY, "did not prove the credential of that name"),
        ("mallory", SITE_KEY, "'mallory' is not a member of this federation"),
    ],
)
def test_a_child_without_the_right_key_is_refused_and_logged(
    transport: TcpTransport,
    server: tuple[Cell, str],
    caplog: pytest.LogCaptureFixture,
    name: str,
    key: bytes | None,
    problem: str,
) -> None:
    cell, url = server
    with caplog.at_level(logging.WARNING, logger="fl_core.cell"):
        with pytest.raises(CellError, match=problem):
            _joined(transport, name, url, key)
        assert cell.children() == []
        # The server's side may still be on its way (a child without a key just leaves).
        wait_until(
            lambda: any("refused a connection" in r.getMessage() for r in caplog.records),
            5,
            "the server's warning",
        )
    # The listener still takes a member that proves itself.
    site = _joined(transport, "site-1", url, SITE_KEY)
    site.close()


def test_a_child_with_a_key_refuses_a_parent_that_does_not_ask_for_it(
    transport: TcpTransport,
) -> None:
    # Anyone could listen at a URL; a member with a key joins only the one holding it too.
    impostor = Cell("server", transport)
    try:
        url = impostor.listen("tcp://127.0.0.1:0")
        with pytest.raises(CellError, match="did not ask for this cell's credential"):
            _joined(transport, "site-1", url, SITE_KEY)
    finally:
        impostor.close()


class _FakeParent:
    """A listener speaking the hello frames by hand: challenges, then answers as told."""

    def __init__(self, transport: TcpTransport, proof_key: bytes) -> None:
        self.proof_key = proof_key
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.conns: list[Connection] = []
        self.listener = transport.listen("tcp://127.0.0.1:0", self._on_connection)

    def _on_connection(self, conn: Connection) -> None:
        self.conns.append(conn)
        nonces: dict[str, str] = {}

        def on_frame(frame: Frame) -> None:
            self.frames.put(frame)
            if frame.headers.get(CONTROL) == HELLO:
                nonces["child"] = frame.headers[NONCE]
                nonces["name"] = frame.headers[Header.ORIGIN]
                conn.send(Frame({CONTROL: CHALLENGE, Header.ORIGIN: "server", NONCE: "ff" * 16}))
            elif frame.headers.get(CONTROL) == PROVE:
                ours = prove(
                    self.proof_key,
                    "listening",
                    joining=nonces["name"],
                    listening="server",
                    direct=False,
                    nonces=(nonces["child"], "ff" * 16),
                )
                conn.send(Frame({CONTROL: HELLO_OK, Header.ORIGIN: "server", PROOF: ours}))

        conn.start(on_frame, lambda exc: None)

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


def test_a_child_refuses_a_parent_that_cannot_prove_the_key(transport: TcpTransport) -> None:
    fake = _FakeParent(transport, proof_key=b"not the site's key")
    try:
        with pytest.raises(CellError, match="did not prove that it holds the credential"):
            _joined(transport, "site-1", fake.listener.url, SITE_KEY)
    finally:
        fake.close()


def test_a_fake_parent_learns_nothing_it_could_replay(
    transport: TcpTransport, server: tuple[Cell, str]
) -> None:
    # What a member sends to an impostor (its proof for the impostor's nonce) does
    # not open the real server: the real one challenges with a nonce of its own.
    fake = _FakeParent(transport, proof_key=SITE_KEY)
    member = _joined(transport, "site-1", fake.listener.url, SITE_KEY)
    member.close()
    hello = fake.frames.get(timeout=5)
    proof = fake.frames.get(timeout=5)
    fake.close()
    assert proof.headers[CONTROL] == PROVE
    cell, url = server
    conn = transport.connect(url, 5)
    answers: queue.Queue[Frame] = queue.Queue()
    conn.start(answers.put, lambda exc: None)
    try:
        conn.send(Frame(dict(hello.headers)))
        assert answers.get(timeout=5).headers[CONTROL] == CHALLENGE
        conn.send(Frame(dict(proof.headers)))
        refusal = answers.get(timeout=5)
        assert refusal.headers[CONTROL] == HELLO_REJECTED
        assert "did not prove" in refusal.headers[Header.ERROR]
        assert cell.children() == []
    finally:
        conn.close()


def test_only_one_proof_per_link(transport: TcpTransport, server: tuple[Cell, str]) -> None:
    cell, url = server
    conn = transport.connect(url, 5)
    answers: queue.Queue[Frame] = queue.Queue()
    closed = threading.Event()
    conn.start(answers.put, lambda exc: closed.set())
    try:
        conn.send(Frame({CONTROL: HELLO, Header.ORIGIN: "site-1", NONCE: "01" * 16}))
        challenge = answers.get(timeout=5)
        assert challenge.headers[CONTROL] == CHALLENGE
        conn.send(Frame({CONTROL: PROVE, PROOF: "00" * 32}))
        assert answers.get(timeout=5).headers[CONTROL] == HELLO_REJECTED
        assert closed.wait(5)  # no second guess on the same link
    finally:
        conn.close()
    assert cell.children() == []


class _Tap:
    """A TCP forwarder between a child and its parent that keeps every byte it passes."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = [self._server]
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        try:
            down, _ = self._server.accept()
        except OSError:
            return
        up = socket.create_connection(self._target)
        self._socks += [down, up]
        self._spawn(self._pump, down, up)
        self._spawn(self._pump, up, down)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)


def test_the_key_never_travels(transport: TcpTransport, server: tuple[Cell, str]) -> None:
    _cell, url = server
    tap = _Tap(url)
    try:
        site = _joined(transport, "site-1", tap.url, SITE_KEY)
        try:
            assert site.request("server", AUX, "who", None, 10).payload == "site-1"
        finally:
            site.close()
    finally:
        tap.close()
    seen = bytes(tap.seen)
    assert b"site-1" in seen  # the tap did see the handshake
    for form in (SITE_KEY, SITE_KEY.hex().encode(), SITE_KEY.hex().upper().encode()):
        assert form not in seen


def test_a_reconnecting_child_proves_its_key_again(
    transport: TcpTransport, server: tuple[Cell, str]
) -> None:
    cell, url = server
    site = Cell("site-1", transport)
    try:
        site.connect_parent(url, timeout=5, reconnect=True, key=SITE_KEY)
        link = cell.links.link_to("site-1")
        assert link is not None
        link.close()  # the server drops it; the site comes back by itself
        wait_until(lambda: cell.links.link_to("site-1") is not link, 5, "the old link to go")
        wait_until(lambda: cell.children() == ["site-1"], 10, "site-1 to come back")
        assert site.request("server", AUX, "who", None, 10).payload == "site-1"
    finally:
        site.close()
