"""The tcp transport over TLS: round trips, mutual TLS, and peers it must refuse."""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fl_core.errors import CellError
from fl_core.serialization.envelope import BodyKind, encode_frame_head
from fl_core.spec.transport import Connection, Frame
from fl_plugins.transport_tcp.transport import TcpTransport

WAIT = 10.0
pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
"""Bounds every wait; reached only when something is broken."""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    is_ca = issuer == _name(cn)
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
    if is_ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), False
        )
    return builder.sign(signer, hashes.SHA256())


class Pki:
    """A CA with server and client certificates, plus a rogue CA and its client."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca_key, rogue_key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        ca = _cert("test-ca", ca_key, _name("test-ca"), ca_key)
        rogue = _cert("rogue-ca", rogue_key, _name("rogue-ca"), rogue_key)
        self.cafile = self._write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
        self.rogue_cafile = self._write("rogue.pem", rogue.public_bytes(serialization.Encoding.PEM))
        self.server = self._leaf("server", ca_key, ca.subject)
        self.client = self._leaf("client", ca_key, ca.subject)
        self.rogue_client = self._leaf("rogue-client", rogue_key, rogue.subject)

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def _leaf(
        self, cn: str, ca_key: ec.EllipticCurvePrivateKey, issuer: x509.Name
    ) -> dict[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, issuer, ca_key)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "certfile": self._write(f"{cn}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            "keyfile": self._write(f"{cn}.key", key_pem),
        }


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


def _transport(pki: Pki, leaf: dict[str, str], **options: object) -> TcpTransport:
    return TcpTransport(tls=True, cafile=pki.cafile, **leaf, **options)  # type: ignore[arg-type]


@pytest.fixture
def server(pki: Pki) -> Iterator[tuple[TcpTransport, Box, str]]:
    transport = _transport(pki, pki.server)
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
    client = _transport(pki, pki.client)
    try:
        _round_trip(client, box, url)
    finally:
        client.close()


def test_tls_without_client_certificates(pki: Pki) -> None:
    transport = _transport(pki, pki.server, require_client_cert=False)
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
        certfile=pki.rogue_client["certfile"],
        keyfile=pki.rogue_client["keyfile"],
    )
    client = _transport(pki, pki.client)
    try:
        url = rogue_server.listen("tcp://127.0.0.1:0", Box().on_connection).url
        with pytest.raises(CellError, match="certificate verify failed"):
            client.connect(url, timeout=2.0)
    finally:
        client.close()
        rogue_server.close()


def _ssl_client(pki: Pki, leaf: dict[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.cafile)
    context.check_hostname = False
    if leaf is not None:
        context.load_cert_chain(leaf["certfile"], leaf["keyfile"])
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
    context.load_cert_chain(pki.rogue_client["certfile"], pki.rogue_client["keyfile"])
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
    client = _transport(pki, pki.client)
    try:
        _round_trip(client, box, url)
    finally:
        client.close()
