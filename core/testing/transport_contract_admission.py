"""Admission cases of the hostile-input contract: what a listener spends before a hello.

`HostileInputContract` (in `transport_contract_security`) inherits these, so
every transport that other processes can reach is held to the obligations of
"Admission" in `fl_core.spec.transport`: a frame over `HELLO_MAX_FRAME` before
admission closes the link unallocated; an unadmitted link is closed after
`hello_timeout`; a listener holds at most `max_unadmitted` unadmitted links and
closes the oldest; once admitted, normal limits apply again.

The suite builds its transports as `transport_factory(hello_timeout=...,
max_unadmitted=...)`: options every listening transport accepts. Raw sockets
reach a listener through `raw_connection(url)`, which dials `scheme://host:port`
over TCP; a transport on other sockets (Unix domain sockets) overrides it. The timeouts
are short (`hello_timeout_in_tests`) so the suite stays fast; every wait is on
the event itself, bounded by `wait`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import urlparse

import pytest

from fl_core.serialization.envelope import BodyKind, encode_frame_head
from fl_core.spec.transport import HELLO_MAX_FRAME, Connection, Frame, Transport
from fl_core.testing.registered import TransportUnderTest
from fl_core.testing.transport_links import Acceptor, FrameRecorder

__all__ = ["AdmissionCases"]

ANNOUNCED: int = 16 * 2**20
"""The body size a hostile peer announces before its hello (and never sends)."""


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of a `scheme://host:port` URL."""
    parsed = urlparse(url)
    assert parsed.hostname and parsed.port, f"not a host:port URL: {url}"
    return parsed.hostname, parsed.port


def _assert_far_end_closes(sock: socket.socket, wait: float) -> None:
    """The far end closes `sock`: EOF or a reset, never a timeout."""
    sock.settimeout(wait)
    try:
        while sock.recv(4096):
            pass  # whatever the server says before it hangs up
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept an unadmitted connection open for {wait:g} s")


class AdmissionCases(TransportUnderTest):
    """Pre-hello limits every listening transport must keep (see the module docstring)."""

    listen_url: ClassVar[str] = ""
    wait: ClassVar[float] = 5.0
    hello_timeout_in_tests: ClassVar[float] = 0.5
    """The `hello_timeout` of the transports of the timeout cases."""
    cap_in_tests: ClassVar[int] = 4
    """The `max_unadmitted` of the transports of the cap case."""

    @pytest.fixture
    def limited(
        self, transport_factory: Callable[..., Transport]
    ) -> Iterator[Callable[..., Transport]]:
        """`transport_factory(**options)`; every transport it builds is closed after the test."""
        made: list[Transport] = []

        def build(**options: Any) -> Transport:
            transport = transport_factory(**options)
            made.append(transport)
            return transport

        yield build
        for transport in reversed(made):
            transport.close()

    def raw_connection(self, url: str) -> socket.socket:
        """A plain socket to the listener at `url`, for bytes that are not frames.

        Override it for a transport whose listeners are not TCP `host:port`.
        """
        return socket.create_connection(host_port(url), timeout=self.wait)

    # --- helpers -----------------------------------------------------------------------

    def _client(self, transport: Transport, url: str) -> tuple[Connection, FrameRecorder]:
        seen = FrameRecorder()
        return seen.start(transport.connect(url, self.wait)), seen

    def _assert_admitted_link_carries_big_frames(
        self, transport: Transport, url: str, acceptor: Acceptor
    ) -> None:
        """A new client, admitted by the listener's owner, exchanges frames over the bound."""
        client, client_seen = self._client(transport, url)
        try:
            client.send(Frame({"hello": "1"}, b"hi"))
            server, server_seen = acceptor.next(self.wait)
            server_seen.wait_frames(1, self.wait)
            server.admit()
            big = bytes(range(256)) * (4 * HELLO_MAX_FRAME // 256)
            client.send(Frame({"n": "up"}, big))
            server.send(Frame({"n": "down"}, big))
            up = server_seen.wait_frames(2, self.wait)[1]
            down = client_seen.wait_frames(1, self.wait)[0]
            assert bytes(up.body) == big and bytes(down.body) == big  # type: ignore[call-overload]
            assert server_seen.closes == [] and client_seen.closes == []
        finally:
            client.close()

    # --- the cases ---------------------------------------------------------------------

    def test_a_raw_socket_announcing_a_big_body_before_hello_is_closed_unallocated(
        self, limited: Callable[..., Transport]
    ) -> None:
        transport = limited()
        acceptor = Acceptor(admit=False)
        listener = transport.listen(self.listen_url, acceptor)
        try:
            head = encode_frame_head({"k": "v"}, BodyKind.BYTES, ANNOUNCED)
            with self.raw_connection(listener.url) as sock:
                sock.sendall(head + b"x")
                _assert_far_end_closes(sock, self.wait)
            assert all(size <= HELLO_MAX_FRAME for size in acceptor.asked), acceptor.asked
            while not acceptor.accepted.empty():
                _, seen = acceptor.accepted.get_nowait()
                seen.wait_closed(self.wait)
                assert seen.frames == []
        finally:
            listener.close()

    def test_a_first_frame_over_the_hello_bound_closes_the_link(
        self, limited: Callable[..., Transport]
    ) -> None:
        transport = limited()
        acceptor = Acceptor(admit=False)
        listener = transport.listen(self.listen_url, acceptor)
        try:
            client, client_seen = self._client(transport, listener.url)
            client.send(Frame({"hello": "big"}, bytes(HELLO_MAX_FRAME)))
            _, server_seen = acceptor.next(self.wait)
            assert server_seen.wait_closed(self.wait) != [None]
            assert server_seen.frames == []
            client_seen.wait_closed(self.wait)
            client.close()
            assert all(size <= HELLO_MAX_FRAME for size in acceptor.asked), acceptor.asked
            # The listener goes on serving peers that behave.
            self._assert_admitted_link_carries_big_frames(transport, listener.url, acceptor)
        finally:
            listener.close()

    def test_a_link_not_admitted_within_the_hello_timeout_is_closed(
        self, limited: Callable[..., Transport]
    ) -> None:
        transport = limited(hello_timeout=self.hello_timeout_in_tests)
        acceptor = Acceptor(admit=False)
        listener = transport.listen(self.listen_url, acceptor)
        try:
            admitted, admitted_seen = self._client(transport, listener.url)
            admitted.send(Frame({"hello": "1"}, b"hi"))
            admitted_server, admitted_server_seen = acceptor.next(self.wait)
            admitted_server_seen.wait_frames(1, self.wait)
            admitted_server.admit()
            # A peer that talks but never gets admitted, and one that never talks.
            talker, talker_seen = self._client(transport, listener.url)
            talker.send(Frame({"hello": "2"}, b"hi"))
            _, talker_server_seen = acceptor.next(self.wait)
            with self.raw_connection(listener.url) as idle:
                _assert_far_end_closes(idle, self.wait)
            assert talker_server_seen.wait_closed(self.wait) != [None]
            talker_seen.wait_closed(self.wait)
            talker.close()
            # The admitted link outlived the timeout, and carries big frames.
            big = bytes(2 * HELLO_MAX_FRAME)
            admitted.send(Frame({"n": "after"}, big))
            assert bytes(admitted_server_seen.wait_frames(2, self.wait)[1].body) == big  # type: ignore[call-overload]
            assert admitted_server_seen.closes == [] and admitted_seen.closes == []
            admitted.close()
        finally:
            listener.close()

    def test_a_listener_caps_unadmitted_links_and_closes_the_oldest(
        self, limited: Callable[..., Transport]
    ) -> None:
        cap, extra = self.cap_in_tests, 3
        transport = limited(max_unadmitted=cap, hello_timeout=60.0)
        acceptor = Acceptor(admit=False)
        listener = transport.listen(self.listen_url, acceptor)
        clients: list[Connection] = []
        try:
            servers: list[FrameRecorder] = []
            for n in range(cap + extra):
                client, _ = self._client(transport, listener.url)
                clients.append(client)
                client.send(Frame({"n": str(n)}, b"idle"))
                _, seen = acceptor.next(self.wait)
                servers.append(seen)
            for oldest in servers[:extra]:
                assert oldest.wait_closed(self.wait) != [None]
            for newest in servers[extra:]:
                assert newest.closes == []
            # A peer that says hello at once is not locked out by the flood.
            self._assert_admitted_link_carries_big_frames(transport, listener.url, acceptor)
        finally:
            for client in clients:
                client.close()
            listener.close()
