"""The grpc transport: its hook and options, URLs, hostile gRPC peers, back-pressure,
TLS host names, and peers that die or freeze."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc import aio

from fl_core.errors import CellError, ConfigError, TargetUnreachableError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.serialization.envelope import BodyKind, encode_frame_head
from fl_core.spec.security import Credentials
from fl_core.spec.transport import Frame, Transport
from fl_core.testing.pki import Pki
from fl_core.testing.transport_contract import Acceptor, FrameRecorder, open_link
from fl_plugins.transport_grpc import hooks
from fl_plugins.transport_grpc.transport import METHOD, SERVICE, GrpcTransport

WAIT = 10.0
"""Bounds every wait; reached only when something is broken."""
MIB = 1024 * 1024
pytestmark = pytest.mark.usefixtures("fl_no_threads_left")


@pytest.fixture
def transport() -> Iterator[GrpcTransport]:
    transport = GrpcTransport()
    yield transport
    transport.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("transport_grpc", hooks)]).registry()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _target(url: str) -> str:
    return url.removeprefix("grpc://")


# --- the hook and options ---------------------------------------------------------


def test_the_hook_registers_grpc_and_the_factory_builds_a_transport() -> None:
    registry = _registry()
    assert registry.names("transport") == {"grpc": "transport_grpc"}
    transport = registry.create(
        "transport", "grpc", {"send_timeout": 5, "keepalive_time": 60.0}, expect=Transport
    )
    try:
        assert isinstance(transport, GrpcTransport)
        assert transport.schemes == ("grpc",)
        assert not transport.carries_objects
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"port": 1}, "port"),
        ({"handshake_timeout": 1.0}, "handshake_timeout"),
        ({"tls": "yes"}, "tls"),
        ({"tls": True}, "certfile"),
        ({"tls": True, "certfile": "/nonexistent.pem", "keyfile": "k", "cafile": "c"}, "certfile"),
        ({"max_body_size": 0}, "max_body_size"),
        ({"keepalive_time": -1.0}, "keepalive_time"),
        ({"keepalive_timeout": "10s"}, "keepalive_timeout"),
        ({"server_name": ""}, "server_name"),
        ({"require_client_cert": 1}, "require_client_cert"),
        ({"hello_timeout": 0.0}, "hello_timeout"),
        ({"max_unadmitted": 1.5}, "max_unadmitted"),
        ({"receive_window": 1024}, "receive_window"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _registry().create("transport", "grpc", options)
    assert info.value.key == f"components.transport.options.{key}"


def test_the_admission_limits_are_job_options() -> None:
    options = {"hello_timeout": 2.5, "max_unadmitted": 16, "receive_window": 4 * 2**20}
    _registry().create("transport", "grpc", options, expect=Transport).close()


def test_tls_files_are_checked_when_the_transport_is_built(pki: Pki, tmp_path: Path) -> None:
    mismatched = dict(pki.server.files(), keyfile=pki.client.keyfile)
    with pytest.raises(ConfigError, match="does not belong") as info:
        GrpcTransport(tls=True, **mismatched)
    assert info.value.key == "components.transport.options.keyfile"
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError) as info:
        GrpcTransport(tls=True, **dict(pki.server.files(), cafile=str(not_pem)))
    assert info.value.key == "components.transport.options.cafile"


def test_credentials_come_from_code_and_are_checked(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="Credentials"):
        hooks._make_grpc(credentials=b"PEM")
    with pytest.raises(ConfigError, match="either credentials or certfile"):
        GrpcTransport(credentials=pki.client.credentials, cafile=pki.cafile)
    with pytest.raises(ConfigError) as info:
        GrpcTransport(credentials=Credentials(pki.ca_pem, b"no key", pki.ca_pem))
    assert (info.value.source, info.value.key) == ("credentials", "private_key")
    anonymous = hooks._make_grpc(credentials=pki.anonymous)
    try:
        with pytest.raises(CellError, match="no certificate"):
            anonymous.listen("grpc://127.0.0.1:0", Acceptor())
    finally:
        anonymous.close()


# --- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["tcp://127.0.0.1:0", "grpc://127.0.0.1", "grpc://:5000", "grpc://h:port"]
)
def test_a_bad_url_is_a_cell_error(transport: GrpcTransport, url: str) -> None:
    with pytest.raises(CellError, match="bad grpc URL"):
        transport.listen(url, Acceptor())
    with pytest.raises(CellError, match="bad grpc URL"):
        transport.connect(url, timeout=1.0)


def test_port_zero_reports_the_bound_port_and_a_taken_port_is_refused(
    transport: GrpcTransport,
) -> None:
    listener = transport.listen("grpc://127.0.0.1:0", Acceptor())
    try:
        host, port = _target(listener.url).rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with pytest.raises(CellError, match="cannot listen"):
            transport.listen(listener.url, Acceptor())
    finally:
        listener.close()


def test_connect_waits_for_a_listener_that_comes_up_late(transport: GrpcTransport) -> None:
    port = _free_port()
    late = GrpcTransport()
    acceptor = Acceptor()
    timer = threading.Timer(0.3, lambda: late.listen(f"grpc://127.0.0.1:{port}", acceptor))
    timer.start()
    try:
        conn = transport.connect(f"grpc://127.0.0.1:{port}", timeout=WAIT)
        FrameRecorder().start(conn)
        acceptor.next(WAIT)
        conn.close()
    finally:
        timer.join()
        late.close()


# --- hostile gRPC peers ------------------------------------------------------------------


async def _raw_call(target: str, messages: list[bytes]) -> tuple[str, str]:
    """Open the link method as a bare gRPC client, send `messages`, return the status."""
    async with aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{SERVICE}/{METHOD}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )()
        for message in messages:
            await call.write(message)
        code = await asyncio.wait_for(call.code(), WAIT)
        return code.name, await call.details()


HOSTILE_MESSAGES = {
    "garbage": (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
    "body longer than announced": (
        encode_frame_head({}, BodyKind.BYTES, 4) + b"12345678",
        "size mismatch",
    ),
    "truncated header": (encode_frame_head({"key": "value"}, BodyKind.NONE, 0)[:-3], "truncated"),
    "oversized body": (
        encode_frame_head({}, BodyKind.BYTES, 17 * MIB, max_body_size=32 * MIB),
        "body too large",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MESSAGES))
def test_a_bad_message_closes_only_that_link_with_a_warning(
    transport: GrpcTransport, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    message, problem = HOSTILE_MESSAGES[case]
    caplog.set_level(logging.WARNING, logger="fl_plugins.transport_grpc")
    link = open_link(transport, "grpc://127.0.0.1:0", WAIT)
    code, details = asyncio.run(_raw_call(_target(link.listener.url), [message]))
    assert code == "INVALID_ARGUMENT" and problem in details
    _, hostile_seen = link.acceptor.next(WAIT)
    (error,) = hostile_seen.wait_closed(WAIT)
    assert isinstance(error, CellError) and problem in str(error)
    assert hostile_seen.frames == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and problem in warnings[0] and "127.0.0.1:" in warnings[0]
    # The link that was already up is untouched.
    link.client.send(Frame({"still": "up"}, b"ok"))
    assert link.server_seen.wait_frames(1, WAIT)[0].headers == {"still": "up"}
    assert link.server_seen.closes == []


def test_messages_over_the_size_limit_are_refused_on_both_sides() -> None:
    small = GrpcTransport(max_body_size=MIB)
    try:
        acceptor = Acceptor()
        listener = small.listen("grpc://127.0.0.1:0", acceptor)
        # gRPC itself refuses a message longer than the frame limit allows.
        head = encode_frame_head({}, BodyKind.BYTES, 3 * MIB, max_body_size=4 * MIB)
        code, _ = asyncio.run(_raw_call(_target(listener.url), [head + bytes(3 * MIB)]))
        assert code == "RESOURCE_EXHAUSTED"
        _, seen = acceptor.next(WAIT)
        (error,) = seen.wait_closed(WAIT)
        assert isinstance(error, CellError) and seen.frames == []
        # A sender refuses such a frame before anything is sent, and the link stays up.
        conn = FrameRecorder().start(small.connect(listener.url, WAIT))
        with pytest.raises(CellError, match="body too large"):
            conn.send(Frame({}, bytes(2 * MIB)))
        conn.send(Frame({"fits": "yes"}, bytes(MIB)))
        _, seen = acceptor.next(WAIT)
        assert seen.wait_frames(1, WAIT)[0].headers == {"fits": "yes"}
        conn.close()
    finally:
        small.close()


# --- receiving into the owner's buffers ------------------------------------------------


def test_a_dialers_cut_frames_are_gathered_into_the_buffers_the_owner_offers(
    transport: GrpcTransport, caplog: pytest.LogCaptureFixture
) -> None:
    link = open_link(transport, "grpc://127.0.0.1:0", WAIT)
    offered: dict[str, bytearray] = {}
    asked: list[tuple[str, int]] = []

    def provide(headers: dict[str, str], size: int) -> memoryview | None:
        asked.append((headers["n"], size))
        if headers["n"] == "raises":
            raise RuntimeError("no buffer today")
        memory = offered.setdefault(headers["n"], bytearray(size + (headers["n"] == "wrong")))
        return None if headers["n"] == "none" else memoryview(memory)

    link.server.receive_into(provide)
    body = bytes(range(256)) * (3 * MIB // 256 + 1)  # many FRAGMENT-sized messages
    names = ("into", "none", "wrong", "raises")
    for n in names:
        link.client.send(Frame({"n": n}, body))
    link.client.send(Frame({"n": "small"}, b"one message"))
    frames = link.server_seen.wait_frames(len(names) + 1, WAIT)
    assert [f.headers["n"] for f in frames] == [*names, "small"]
    assert all(bytes(f.body) == body for f in frames[:4])  # type: ignore[arg-type]
    # The offered buffer itself holds the body; a wrong one, none or an error: a new one.
    assert isinstance(frames[0].body, memoryview) and frames[0].body.obj is offered["into"]
    assert offered["into"] == body
    assert not any(offered["wrong"])
    assert asked == [(n, len(body)) for n in names]  # a frame in one message is not cut
    assert "the body buffer provider failed" in caplog.text


# --- back-pressure ------------------------------------------------------------------------


def test_a_peer_that_does_not_read_blocks_the_sender() -> None:
    transport = GrpcTransport(send_timeout=0.5)
    try:
        accepted: list[object] = []  # accepted, never started: nothing is read
        listener = transport.listen("grpc://127.0.0.1:0", accepted.append)
        conn = transport.connect(listener.url, WAIT)
        conn.start(lambda frame: None, lambda exc: None)
        sent = 0
        with pytest.raises(TargetUnreachableError, match="has not read"):
            for sent in range(1, 201):  # noqa: B007 - read after the loop
                conn.send(Frame({}, bytes(MIB)))
        assert sent < 200  # it blocked long before 200 MiB were buffered
    finally:
        transport.close()


# --- TLS host names ------------------------------------------------------------------------


def test_the_server_name_is_checked_unless_overridden(pki: Pki) -> None:
    server = GrpcTransport(credentials=pki.server.credentials, require_client_cert=False)
    plain = GrpcTransport(credentials=pki.anonymous)
    named = GrpcTransport(credentials=pki.anonymous, server_name="localhost")
    try:
        acceptor = Acceptor()
        port = _target(server.listen("grpc://0.0.0.0:0", acceptor).url).rsplit(":", 1)[1]
        # 127.0.0.2 reaches the listener, but the certificate does not name it.
        with pytest.raises(TargetUnreachableError) as info:
            plain.connect(f"grpc://127.0.0.2:{port}", timeout=WAIT)
        assert "TLS name check failed" in str(info.value)
        assert "does not name the address 127.0.0.2" in str(info.value)
        assert "(it names localhost, 127.0.0.1, ::1)" in str(info.value)
        conn = named.connect(f"grpc://127.0.0.2:{port}", timeout=WAIT)
        FrameRecorder().start(conn)
        acceptor.next(WAIT)
        conn.close()
    finally:
        for transport in (named, plain, server):
            transport.close()


def test_a_server_name_option_the_certificate_lacks_is_refused(pki: Pki) -> None:
    server = GrpcTransport(credentials=pki.server.credentials)
    client = GrpcTransport(credentials=pki.client.credentials, server_name="server.example.org")
    try:
        url = server.listen("grpc://127.0.0.1:0", Acceptor()).url
        with pytest.raises(TargetUnreachableError) as info:
            client.connect(url, timeout=WAIT)
        message = str(info.value)
        assert "does not name the host name server.example.org" in message
        assert "(it names localhost, 127.0.0.1, ::1)" in message
    finally:
        client.close()
        server.close()


# --- dead and frozen peers --------------------------------------------------------------

PEER = textwrap.dedent(
    """
    import sys, time
    from fl_core.spec.transport import Frame
    from fl_plugins.transport_grpc.transport import GrpcTransport

    transport = GrpcTransport(keepalive_time=0.5, keepalive_timeout=0.5)
    role, url = sys.argv[1], sys.argv[2]
    if role == "client":
        conn = transport.connect(url, 10.0)
        conn.start(lambda frame: None, lambda exc: None)
        conn.send(Frame({"hello": "from the child"}, b"x"))
        print("ready", flush=True)
    else:
        def accept(conn):
            conn.admit()  # as a cell does after the hello: the hello timeout ends
            conn.start(lambda frame: None, lambda exc: None)
        print(transport.listen(url, accept).url, flush=True)
    time.sleep(120)
    """
)


class Child:
    """A peer in its own process, killed (whatever state it is in) when done."""

    def __init__(self, role: str, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PEER, role, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def first_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line, "the child process ended before it was ready"
        return line

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_listener_sees_a_dead_or_frozen_client_go(how: str) -> None:
    transport = GrpcTransport(keepalive_time=0.5, keepalive_timeout=0.5)
    acceptor = Acceptor()
    listener = transport.listen("grpc://127.0.0.1:0", acceptor)
    child = Child("client", listener.url)
    try:
        assert child.first_line() == "ready"
        _, seen = acceptor.next(WAIT)
        seen.wait_frames(1, WAIT)
        # Killed: its kernel closes the socket. Frozen: only keepalive can tell.
        child.signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        (error,) = seen.wait_closed(WAIT)
        assert isinstance(error, CellError)
    finally:
        child.kill()
        transport.close()


@pytest.mark.e2e
def test_a_client_sees_a_frozen_listener_go() -> None:
    transport = GrpcTransport(keepalive_time=0.5, keepalive_timeout=0.5)
    child = Child("server", "grpc://127.0.0.1:0")
    try:
        url = child.first_line()
        seen = FrameRecorder()
        conn = seen.start(transport.connect(url, WAIT))
        conn.send(Frame({"hello": "child"}, b"x"))
        child.signal(signal.SIGSTOP)
        (error,) = seen.wait_closed(WAIT)
        assert isinstance(error, CellError)
        with pytest.raises(TargetUnreachableError):
            conn.send(Frame({"late": "1"}, b"x"))
    finally:
        child.kill()
        transport.close()


# --- closing --------------------------------------------------------------------------------


def test_transport_close_ends_every_link_once() -> None:
    transport = GrpcTransport()
    link = open_link(transport, "grpc://127.0.0.1:0", WAIT)
    transport.close()
    assert len(link.client_seen.closes) == 1 and len(link.server_seen.closes) == 1
    with pytest.raises(CellError):
        link.client.send(Frame({}, b"x"))
    with pytest.raises(CellError, match="closed"):
        transport.connect(link.listener.url, 1.0)


def test_a_server_from_another_ca_is_refused_at_once_saying_so(pki: Pki) -> None:
    rogue = GrpcTransport(credentials=pki.rogue_server.credentials, require_client_cert=False)
    client = GrpcTransport(credentials=pki.client.credentials)
    try:
        url = rogue.listen("grpc://127.0.0.1:0", Acceptor()).url
        with pytest.raises(TargetUnreachableError) as info:
            client.connect(url, timeout=WAIT)
        message = str(info.value)
        assert "the server certificate is not from a CA this end trusts" in message
        assert "CERTIFICATE_VERIFY_FAILED" in message
        assert "could not connect within" not in message  # not retried until the deadline
    finally:
        client.close()
        rogue.close()
