"""Contract suites for TLS and for hostile peers, mixed in next to `TransportContract`.

`SecureTransportContract` is for transports that speak TLS. It builds them
with `secure_transport_factory(credentials, require_client_cert)`, which by
default passes those two options to the transport's registered factory (see
`TransportContract`); the plaintext transport comes from `transport_factory`.
Certificates come from `fl_core.testing.pki.Pki`; a client presenting no
certificate gets `Credentials` with an empty chain and key.

`HostileInputContract` is for transports that listen on TCP `host:port`
sockets: raw bytes that are not frames (garbage, a truncated frame, an
oversized frame header) must get that socket closed, while a well-behaved
client keeps working. It also holds the transport to the admission limits
(`AdmissionCases` in `transport_contract_admission`: small frames, a hello
timeout and a cap before a link is admitted), for which it builds transports
as `transport_factory(hello_timeout=..., max_unadmitted=...)`::

    class TestMyTransport(TransportContract, SecureTransportContract, HostileInputContract):
        listen_url = "mytcp://127.0.0.1:0"
        component = "mytcp"
        plugin = "my_plugin"

Under TLS a listener's links give `Connection.peer_certificate`: the DER of
the client certificate its handshake verified (None without one, and on a
plaintext link), which is what a security provider binds to the cell name
the peer claims. A dialing end checks that the listener's certificate names
the URL's host; `Pki.elsewhere`, a certificate from the same CA that names
another host, must be refused, with an error that names the host.

A refused peer may see its `connect` raise `TargetUnreachableError`, or (TLS
1.3 lets a client finish its handshake before the server has judged the
client's certificate) get a connection that closes without delivering a
frame; the listener's owner must never see it. Every wait is bounded by
`wait`; `refused_connect_timeout` bounds a connect that is meant to fail.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from typing import ClassVar
from urllib.parse import urlparse

import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.errors import CellError
from fl_core.serialization.envelope import MAGIC, MAX_HEADER_SIZE, BodyKind, encode_frame_head
from fl_core.spec.security import Credentials
from fl_core.spec.transport import Frame, Listener, Transport
from fl_core.testing.pki import Pki
from fl_core.testing.registered import SecureFactory, TransportUnderTest
from fl_core.testing.transport_contract_admission import AdmissionCases
from fl_core.testing.transport_links import (
    AUX,
    Acceptor,
    FrameRecorder,
    bytes_echo,
    open_link,
)

__all__ = ["HostileInputContract", "SecureTransportContract"]


def _body(frame: Frame) -> bytes:
    assert isinstance(frame.body, bytes | bytearray | memoryview), frame.body
    return bytes(frame.body)


def _exchange(transport: Transport, listener: Listener, acceptor: Acceptor, wait: float) -> None:
    """A fresh client of `listener` gets a frame through both ways, then closes in order."""
    seen = FrameRecorder()
    conn = seen.start(transport.connect(listener.url, wait))
    try:
        conn.send(Frame({"hello": "up"}, b"\x00up"))
        accepted, accepted_seen = acceptor.next(wait)
        (up,) = accepted_seen.wait_frames(1, wait)
        assert (up.headers, _body(up)) == ({"hello": "up"}, b"\x00up")
        accepted.send(Frame({"hello": "down"}, b"\x00down"))
        (down,) = seen.wait_frames(1, wait)
        assert (down.headers, _body(down)) == ({"hello": "down"}, b"\x00down")
    finally:
        conn.close()
    assert seen.wait_closed(wait) == [None]


class SecureTransportContract(TransportUnderTest):
    """TLS tests every TLS-capable transport must pass (see the module docstring)."""

    listen_url: ClassVar[str] = ""
    wait: ClassVar[float] = 5.0
    refused_connect_timeout: ClassVar[float] = 1.0
    """How long a connect that the other end refuses may try."""

    @pytest.fixture(scope="class")
    @classmethod
    def pki(cls, tmp_path_factory: pytest.TempPathFactory) -> Pki:
        """A CA, its server and client, and a rogue CA with its own; one per test class."""
        return Pki(tmp_path_factory.mktemp("pki"))

    @pytest.fixture
    def make(self, secure_transport_factory: SecureFactory) -> Iterator[SecureFactory]:
        """Like `secure_transport_factory`; every transport it builds is closed after the test."""
        made: list[Transport] = []

        def build(credentials: Credentials, require_client_cert: bool) -> Transport:
            transport = secure_transport_factory(credentials, require_client_cert)
            made.append(transport)
            return transport

        yield build
        for transport in reversed(made):
            transport.close()

    # --- helpers -----------------------------------------------------------------------

    def _cell_round_trip(self, server_transport: Transport, client_transport: Transport) -> None:
        resources = CellResources()
        server = Cell("server", server_transport, resources)
        site = Cell("site-1", client_transport, resources)
        try:
            for cell in (server, site):
                cell.register_handler(AUX, "echo", bytes_echo(cell))
            site.connect_parent(server.listen(self.listen_url), timeout=self.wait)
            up = site.request("server", AUX, "echo", b"\x00secret", timeout=self.wait)
            assert up.payload == b"server|site-1|\x00secret"
            down = server.request("site-1", AUX, "echo", b"\x00back", timeout=self.wait)
            assert down.payload == b"site-1|server|\x00back"
        finally:
            site.close()
            server.close()
            resources.close()

    def _assert_refused(self, client: Transport, listener: Listener, acceptor: Acceptor) -> None:
        try:
            conn = client.connect(listener.url, self.refused_connect_timeout)
        except CellError:  # TargetUnreachableError is one
            conn = None
        if conn is not None:
            seen = FrameRecorder()
            seen.start(conn)
            with contextlib.suppress(CellError):
                conn.send(Frame({"refused": "yes"}, b"x"))
            seen.wait_closed(self.wait)
            assert seen.frames == []
            conn.close()
        assert acceptor.accepted.empty(), "a refused peer reached the listener's owner"

    def _refuses_then_serves(
        self,
        make: SecureFactory,
        pki: Pki,
        refused: Transport,
        *,
        require_client_cert: bool,
    ) -> None:
        server = make(pki.server.credentials, require_client_cert)
        acceptor = Acceptor()
        listener = server.listen(self.listen_url, acceptor)
        try:
            self._assert_refused(refused, listener, acceptor)
            good = make(pki.client.credentials, False)
            _exchange(good, listener, acceptor, self.wait)
        finally:
            listener.close()

    # --- the suite ---------------------------------------------------------------------

    def test_tls_round_trip_without_client_certificates(
        self, make: SecureFactory, pki: Pki
    ) -> None:
        server = make(pki.server.credentials, False)
        self._cell_round_trip(server, make(pki.anonymous, False))

    def test_mutual_tls_round_trip(self, make: SecureFactory, pki: Pki) -> None:
        server = make(pki.server.credentials, True)
        self._cell_round_trip(server, make(pki.client.credentials, True))

    def test_a_client_with_a_certificate_from_another_ca_is_refused(
        self, make: SecureFactory, pki: Pki
    ) -> None:
        rogue = make(pki.rogue_client.credentials, False)
        self._refuses_then_serves(make, pki, rogue, require_client_cert=True)

    def test_a_client_without_a_certificate_is_refused_when_one_is_required(
        self, make: SecureFactory, pki: Pki
    ) -> None:
        anonymous = make(pki.anonymous, False)
        self._refuses_then_serves(make, pki, anonymous, require_client_cert=True)

    def test_a_plaintext_client_on_a_tls_port_is_refused(
        self, make: SecureFactory, pki: Pki, transport_factory: Callable[[], Transport]
    ) -> None:
        plaintext = transport_factory()
        try:
            self._refuses_then_serves(make, pki, plaintext, require_client_cert=False)
        finally:
            plaintext.close()

    def test_a_client_refuses_a_server_from_another_ca(self, make: SecureFactory, pki: Pki) -> None:
        rogue_server = make(pki.rogue_server.credentials, False)
        acceptor = Acceptor()
        listener = rogue_server.listen(self.listen_url, acceptor)
        try:
            with pytest.raises(CellError):
                conn = make(pki.client.credentials, False).connect(
                    listener.url, self.refused_connect_timeout
                )
                conn.close()  # reached only if the client wrongly accepted the server
        finally:
            listener.close()

    def test_a_client_refuses_a_server_whose_certificate_names_another_host(
        self, make: SecureFactory, pki: Pki
    ) -> None:
        # The CA vouches for the certificate, but it names another host: a
        # participant holding it must not pass for the one the URL names.
        impostor = make(pki.elsewhere.credentials, True)
        acceptor = Acceptor()
        listener = impostor.listen(self.listen_url, acceptor)
        host = urlparse(listener.url).hostname
        assert host, listener.url
        try:
            with pytest.raises(CellError) as info:
                conn = make(pki.client.credentials, False).connect(
                    listener.url, self.refused_connect_timeout
                )
                conn.close()  # reached only if the client wrongly accepted the server
            assert host in str(info.value), "the error must say which host was not named"
            assert acceptor.accepted.empty(), "the refused listener's owner got a link"
        finally:
            listener.close()

    def test_the_listener_sees_the_client_certificate_under_mutual_tls(
        self, make: SecureFactory, pki: Pki
    ) -> None:
        server = make(pki.server.credentials, True)
        listener = server.listen(self.listen_url, acceptor := Acceptor())
        try:
            for identity in (pki.client, pki.issue("site-2")):
                seen = FrameRecorder()
                conn = seen.start(
                    make(identity.credentials, False).connect(listener.url, self.wait)
                )
                accepted, _ = acceptor.next(self.wait)
                assert accepted.peer_certificate == identity.der
                conn.close()
        finally:
            listener.close()

    def test_no_peer_certificate_without_a_client_certificate(
        self, make: SecureFactory, pki: Pki
    ) -> None:
        server = make(pki.server.credentials, False)
        listener = server.listen(self.listen_url, acceptor := Acceptor())
        try:
            seen = FrameRecorder()
            conn = seen.start(make(pki.anonymous, False).connect(listener.url, self.wait))
            accepted, _ = acceptor.next(self.wait)
            assert accepted.peer_certificate is None
            conn.close()
        finally:
            listener.close()

    def test_no_peer_certificate_on_a_plaintext_link(
        self, transport_factory: Callable[[], Transport]
    ) -> None:
        transport = transport_factory()
        try:
            link = open_link(transport, self.listen_url, self.wait)
            assert link.server.peer_certificate is None
            assert link.client.peer_certificate is None
            link.client.close()
            link.listener.close()
        finally:
            transport.close()


# --- hostile input ----------------------------------------------------------------------


def _oversized_header() -> bytes:
    return struct.pack("!4sII", MAGIC, MAX_HEADER_SIZE + 1, 0) + bytes(64)


HOSTILE_INPUTS: dict[str, tuple[bytes, bool]] = {
    "garbage": (b"\x00\x01GET / HTTP/1.1\r\n\r\n" * 4, False),
    "truncated frame": (encode_frame_head({"k": "v"}, BodyKind.BYTES, 100) + b"only ten b", True),
    "oversized frame header": (_oversized_header(), False),
}
"""Raw bytes a peer sends, and whether it then half-closes its socket."""


class HostileInputContract(AdmissionCases):
    """Raw-socket abuse every listening transport must survive (see the module docstring).

    Raw sockets come from `raw_connection(url)`: TCP to `host:port` by default;
    a transport on other sockets (Unix domain sockets) overrides it.
    """

    listen_url: ClassVar[str] = ""
    wait: ClassVar[float] = 5.0

    def _assert_socket_closed(self, sock: socket.socket) -> None:
        """The far end closes `sock`: EOF or a reset, never a timeout."""
        sock.settimeout(self.wait)
        try:
            while sock.recv(4096):
                pass  # whatever the server says before it hangs up
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"the server kept a hostile connection open for {self.wait:g} s")

    @pytest.mark.parametrize("case", sorted(HOSTILE_INPUTS))
    def test_hostile_bytes_close_only_that_connection(
        self, transport_factory: Callable[[], Transport], case: str
    ) -> None:
        data, half_close = HOSTILE_INPUTS[case]
        transport = transport_factory()
        try:
            acceptor = Acceptor()
            listener = transport.listen(self.listen_url, acceptor)
            # A good client, linked before the hostile one arrives.
            good_seen = FrameRecorder()
            good = good_seen.start(transport.connect(listener.url, self.wait))
            good.send(Frame({"n": "1"}, b"before"))
            accepted, accepted_seen = acceptor.next(self.wait)
            accepted_seen.wait_frames(1, self.wait)

            with self.raw_connection(listener.url) as sock:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                self._assert_socket_closed(sock)
            # If the transport handed the hostile link to its owner, it closed it unheard.
            while not acceptor.accepted.empty():
                _, hostile_seen = acceptor.accepted.get_nowait()
                hostile_seen.wait_closed(self.wait)
                assert hostile_seen.frames == []

            good.send(Frame({"n": "2"}, b"after"))
            accepted.send(Frame({"n": "3"}, b"back"))
            got = [_body(f) for f in accepted_seen.wait_frames(2, self.wait)]
            assert got == [b"before", b"after"]
            assert _body(good_seen.wait_frames(1, self.wait)[0]) == b"back"
            assert accepted_seen.closes == [] and good_seen.closes == []
            # And the listener still takes new clients.
            _exchange(transport, listener, acceptor, self.wait)
            good.close()
            listener.close()
        finally:
            transport.close()
