"""The tcp transport over TLS: round trips, mutual TLS, and peers it must refuse."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fl_core.errors import CellError, ConfigError
from fl_core.serialization.envelope import BodyKind, encode_frame_head
from fl_core.spec.security import Credentials
from fl_core.spec.transport import Connection, Frame
from fl_core.testing.pki import Identity, Pki
from fl_plugins.transport_tcp import hooks
from fl_plugins.transport_tcp.transport import TcpTransport

WAIT = 10.0
pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
"""Bounds every wait; reached only when something is broken."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


class Box:
    """Collects frames and closes of the connections a listener accepts."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closes: list[BaseException | None] = []
        self.accepted: list[Connection] = []
        self.cond = threading.Condition()

    def on_connection(self, conn: Connection) -> None:
        with self.cond:
            self.accepted.append(conn)
        conn.admit()  # as a cell does once the peer said hello
        conn.start(self.add_frame, self.add_close)

    def add_frame(self, frame: Frame) -> None:
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def add_close(self, exc: BaseException | None) -> None:
        with self.cond:
            self.closes.append(exc)
            self.cond.notify_all()

    def wait(self, frames: int = 0, closes: int = 0) -> None:
        with self.cond:
            assert self.cond.wait_for(
                lambda: len(self.frames) >= frames and len(self.closes) >= closes, WAIT
            )


def _transport(leaf: Identity, **options: Any) -> TcpTransport:
    return TcpTransport(tls=True, **leaf.files(), **options)


@pytest.fixture
def server(pki: Pki) -> Iterator[tuple[TcpTransport, Box, str]]:
    transport = _transport(pki.server)
    box = Box()
    url = transport.listen("tcp://127.0.0.1:0", box.on_connection).url
    yield transport, box, url
    transport.close()


def _round_trip(client: TcpTransport, box: Box, url: str) -> None:
    mine = Box()
    conn = client.connect(url, timeout=WAIT)
    conn.start(mine.add_frame, mine.add_close)
    body = bytes(range(256)) * 4096  # 1 MiB
    conn.send(Frame({"hello": "tls"}, body))
    box.wait(frames=1)
    assert box.frames[-1].headers == {"hello": "tls"} and box.frames[-1].body == body
    box.accepted[-1].send(Frame({"back": "1"}, b"pong"))
    mine.wait(frames=1)
    assert mine.frames[0].body == b"pong"
    conn.close()
    mine.wait(closes=1)
    assert mine.closes == [None]


def test_mutual_tls_round_trip(pki: Pki, server: tuple[TcpTransport, Box, str]) -> None:
    _, box, url = server
    client = _transport(pki.client)
    try:
        _round_trip(client, box, url)
    finally:
        client.close()


def test_tls_without_client_certificates(pki: Pki) -> None:
    transport = _transport(pki.server, require_client_cert=False)
    box = Box()
    try:
        url = transport.listen("tcp://127.0.0.1:0", box.on_connection).url
        # A client that presents no certificate at all, verifying the server.
        context = ssl.create_default_context(cafile=pki.cafile)
        context.check_hostname = False
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=WAIT) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(encode_frame_head({"anon": "1"}, BodyKind.BYTES, 2) + b"hi")
                box.wait(frames=1)
        assert box.frames[0].body == b"hi"
    finally:
        transport.close()


def test_a_client_refuses_a_server_from_another_ca(pki: Pki) -> None:
    rogue_server = TcpTransport(
        tls=True,
        cafile=pki.rogue_cafile,
        certfile=pki.rogue_server.certfile,
        keyfile=pki.rogue_server.keyfile,
    )
    client = _transport(pki.client)
    try:
        url = rogue_server.listen("tcp://127.0.0.1:0", Box().on_connection).url
        with pytest.raises(CellError, match="certificate verify failed"):
            client.connect(url, timeout=2.0)
    finally:
        client.close()
        rogue_server.close()


def _ssl_client(pki: Pki, leaf: Identity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.cafile)
    context.check_hostname = False
    if leaf is not None:
        context.load_cert_chain(leaf.certfile, leaf.keyfile)
    return context


def _hostile_plaintext(url: str) -> None:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(b"FLC1" + bytes(300))  # a plaintext fl-core client on a TLS port
        while sock.recv(1024):
            pass  # an alert perhaps, then the server closes


def _refused(context: ssl.SSLContext, url: str) -> None:
    """Handshake, send, read: the server must end the link without a byte of data."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                # TLS 1.3: the client's handshake ends before the server
                # checks its certificate; the refusal arrives on the next read.
                tls.sendall(b"FLC1")
                assert tls.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            pass


def _rogue_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the rogue trusts anyone; the server must not
    context.load_cert_chain(pki.rogue_client.certfile, pki.rogue_client.keyfile)
    return context


@pytest.mark.parametrize("case", ["plaintext client", "rogue-CA client", "no client cert"])
def test_a_refused_tls_peer_gets_one_warning_and_others_still_connect(
    pki: Pki,
    server: tuple[TcpTransport, Box, str],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    _, box, url = server
    caplog.set_level(logging.WARNING, logger="fl_plugins.transport_tcp")
    if case == "plaintext client":
        _hostile_plaintext(url)
    elif case == "rogue-CA client":
        _refused(_rogue_context(pki), url)
    else:
        _refused(_ssl_client(pki, None), url)
    with box.cond:
        box.cond.wait_for(lambda: any(r.levelno == logging.WARNING for r in caplog.records), WAIT)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "TLS handshake failed" in warnings[0] and "127.0.0.1:" in warnings[0]
    if case != "plaintext client":
        assert "certificate" in warnings[0]
    assert box.accepted == []  # the refused peer never reached the owner
    client = _transport(pki.client)
    try:
        _round_trip(client, box, url)
    finally:
        client.close()


# --- credentials from memory (the security provider's way) ---------------------------


def _tls_temp_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("fl-core-tls-")}


def test_mutual_tls_with_in_memory_credentials_leaves_no_key_file_behind(pki: Pki) -> None:
    before = _tls_temp_dirs()
    server = TcpTransport(credentials=pki.server.credentials)
    client = TcpTransport(credentials=pki.client.credentials)
    box = Box()
    try:
        assert _tls_temp_dirs() == before  # the key was on disk only while it was loaded
        url = server.listen("tcp://127.0.0.1:0", box.on_connection).url
        _round_trip(client, box, url)
    finally:
        client.close()
        server.close()


def test_the_factory_passes_credentials_from_code(pki: Pki) -> None:
    server = hooks._make_tcp(credentials=pki.server.credentials, require_client_cert=False)
    client = hooks._make_tcp(credentials=pki.anonymous)
    box = Box()
    try:
        assert isinstance(server, TcpTransport) and isinstance(client, TcpTransport)
        url = server.listen("tcp://127.0.0.1:0", box.on_connection).url
        _round_trip(client, box, url)
        # A transport that presents no certificate can connect, never listen.
        with pytest.raises(CellError, match="no certificate"):
            client.listen("tcp://127.0.0.1:0", Box().on_connection)
    finally:
        client.close()
        server.close()


def test_bad_credentials_are_config_errors(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="credentials"):
        hooks._make_tcp(credentials={"certificate_chain": b""})
    with pytest.raises(ConfigError, match="either credentials or certfile"):
        TcpTransport(credentials=pki.client.credentials, cafile=pki.cafile)
    wrong_key = Credentials(
        pki.client.credentials.certificate_chain,
        pki.server.credentials.private_key,
        pki.ca_pem,
    )
    with pytest.raises(ConfigError) as info:
        TcpTransport(credentials=wrong_key)
    assert info.value.key == "certificate_chain"
    with pytest.raises(ConfigError) as info:
        TcpTransport(credentials=Credentials(b"", b"", b"not a CA"))
    assert info.value.key == "root_certificates"


def test_the_hello_timeout_covers_a_tls_handshake_that_never_ends(pki: Pki) -> None:
    # The TLS handshake alone may take 60 s here; the hello timeout is shorter.
    transport = TcpTransport(
        tls=True, **pki.server.files(), handshake_timeout=60.0, hello_timeout=0.5
    )
    box = Box()
    try:
        url = transport.listen("tcp://127.0.0.1:0", box.on_connection).url
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=WAIT) as raw:
            raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
            try:
                assert raw.recv(4096) == b""  # closed: EOF ...
            except ConnectionResetError:
                pass  # ... or a reset
        assert box.accepted == []  # the owner never saw it
    finally:
        transport.close()


# --- who the peer is: certificates and host names ----------------------------------------


def test_both_ends_see_the_certificate_their_handshake_verified(
    pki: Pki, server: tuple[TcpTransport, Box, str]
) -> None:
    _, box, url = server
    client = _transport(pki.client)
    try:
        conn = client.connect(url, timeout=WAIT)
        conn.start(Box().add_frame, Box().add_close)
        conn.send(Frame({"hello": "1"}, b"x"))
        box.wait(frames=1)
        assert box.accepted[-1].peer_certificate == pki.client.der
        assert conn.peer_certificate == pki.server.der
        conn.close()
    finally:
        client.close()


def test_the_server_name_is_checked_unless_overridden(pki: Pki) -> None:
    server = _transport(pki.server)
    plain = _transport(pki.client)
    named = _transport(pki.client, server_name="localhost")
    box = Box()
    try:
        port = server.listen("tcp://0.0.0.0:0", box.on_connection).url.rsplit(":", 1)[1]
        # 127.0.0.2 reaches the listener, but the certificate does not name it.
        with pytest.raises(CellError) as info:
            plain.connect(f"tcp://127.0.0.2:{port}", timeout=WAIT)
        assert "TLS name check failed" in str(info.value)
        assert "does not name the address 127.0.0.2" in str(info.value)
        assert "(it names localhost, 127.0.0.1, ::1)" in str(info.value)
        conn = named.connect(f"tcp://127.0.0.2:{port}", timeout=WAIT)
        conn.start(Box().add_frame, Box().add_close)
        conn.send(Frame({"hello": "1"}, b"x"))
        box.wait(frames=1)
        conn.close()
    finally:
        for transport in (named, plain, server):
            transport.close()


def test_a_server_name_option_the_certificate_lacks_is_refused(pki: Pki) -> None:
    server = _transport(pki.server)
    client = TcpTransport(credentials=pki.client.credentials, server_name="server.example.org")
    try:
        url = server.listen("tcp://127.0.0.1:0", Box().on_connection).url
        with pytest.raises(CellError, match=r"does not name the host name server\.example\.org"):
            client.connect(url, timeout=WAIT)
    finally:
        client.close()
        server.close()


def test_the_factory_takes_server_name_from_a_job_config() -> None:
    with pytest.raises(ConfigError) as info:
        hooks._make_tcp(server_name="")
    assert info.value.key == "components.transport.options.server_name"
    hooks._make_tcp(server_name="server.example.org").close()
