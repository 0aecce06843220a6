"""What `uds` adds to the transport contract: URLs, socket files, options, its own peers.

Transports are built as fl-core builds them, through the registry.
"""

from __future__ import annotations

import os
import queue
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fl_transport_uds.urls import MAX_PATH_BYTES, format_url, parse_url, socket_path

from fl_core.errors import CellError, ConfigError, TargetUnreachableError
from fl_core.plugins import make_plugin_manager
from fl_core.spec.security import Credentials
from fl_core.spec.transport import Connection, Frame, Transport

from .test_uds_contract import Acceptor, FrameRecorder, open_link, uds_registry

WAIT = 5.0


@pytest.fixture
def make() -> Iterator[Callable[..., Transport]]:
    """`make(**options)`: a uds transport from the registry, closed after the test."""
    registry = uds_registry()
    made: list[Transport] = []

    def build(**options: Any) -> Transport:
        transport = registry.create("transport", "uds", options, expect=Transport)
        assert isinstance(transport, Transport)
        made.append(transport)
        return transport

    yield build
    for transport in reversed(made):
        transport.close()


def body_of(frame: Frame) -> bytes:
    assert isinstance(frame.body, bytes | bytearray | memoryview), frame.body
    return bytes(frame.body)


def short_path(tmp_path: Path, name: str) -> str:
    """A socket path under tmp_path, if that is short enough for a socket address."""
    path = str(tmp_path / name)
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        pytest.skip(f"the test folder's path is too long for a socket address: {path}")
    return path


# --- the plugin ----------------------------------------------------------------------


def test_the_installed_distribution_registers_uds_under_its_plugin_name() -> None:
    pm = make_plugin_manager(autoload=True)
    assert pm.registry().names("transport")["uds"] == "transport_uds"


def test_an_unknown_option_names_its_key_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        uds_registry().create("transport", "uds", {"tls": True})
    assert "components.transport.options.tls" in str(info.value)
    assert "hello_timeout" in str(info.value)


def test_a_non_positive_hello_timeout_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        uds_registry().create("transport", "uds", {"hello_timeout": 0})
    assert "components.transport.options.hello_timeout" in str(info.value)


def test_credentials_are_refused_because_uds_has_no_tls() -> None:
    credentials = Credentials(b"chain", b"key", b"roots")
    with pytest.raises(ConfigError, match="no TLS"):
        uds_registry().create("transport", "uds", {"credentials": credentials})


def test_no_credentials_is_plaintext_as_from_the_none_provider(
    make: Callable[..., Transport],
) -> None:
    transport = make(credentials=None)
    link = open_link(transport, "uds://127.0.0.1:0", WAIT)
    link.client.send(Frame({"n": "1"}, b"hi"))
    assert body_of(link.server_seen.wait_frames(1, WAIT)[0]) == b"hi"


# --- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["uds://127.0.0.1:0", "uds://localhost:0", "uds://[::1]:0"])
def test_a_host_with_port_0_asks_for_a_fresh_socket_file(url: str) -> None:
    assert parse_url(url) is None


def test_a_path_url_round_trips_even_with_spaces() -> None:
    assert parse_url("uds:///run/fl%20core/server.sock") == "/run/fl core/server.sock"
    assert parse_url(format_url("/run/fl core/server.sock")) == "/run/fl core/server.sock"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("tcp://127.0.0.1:0", "scheme"),
        ("uds://127.0.0.1:8002", "only port 0"),
        ("uds://relative/path.sock", "only port 0"),
        ("uds:///a.sock?x=1", "query"),
        ("uds:" + "/" * 3 + "a" * MAX_PATH_BYTES, "longer than"),
    ],
)
def test_a_bad_url_says_what_is_wrong_and_what_is_expected(url: str, why: str) -> None:
    with pytest.raises(CellError) as info:
        parse_url(url)
    assert why in str(info.value)
    assert "uds:///ABSOLUTE/PATH.sock" in str(info.value)


def test_connecting_to_a_fresh_address_request_is_an_error(make: Callable[..., Transport]) -> None:
    with pytest.raises(CellError, match="only `listen` can make"):
        make().connect("uds://127.0.0.1:0", WAIT)


# --- socket files -----------------------------------------------------------------------


def test_a_fresh_listener_lives_in_a_private_folder_removed_with_the_transport(
    make: Callable[..., Transport],
) -> None:
    transport = make()
    listener = transport.listen("uds://127.0.0.1:0", Acceptor())
    path = Path(socket_path(listener.url))
    assert path.is_socket()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listener.close()
    assert not path.exists()  # gone once close returns: the path is free again
    assert path.parent.exists()  # a listener may come back on the same URL
    transport.close()
    assert not path.parent.exists()


def test_a_named_socket_file_is_made_private_and_removed_at_close(
    make: Callable[..., Transport], tmp_path: Path
) -> None:
    path = short_path(tmp_path, "server.sock")
    listener = make().listen(format_url(path), Acceptor())
    assert listener.url == format_url(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    listener.close()
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(make: Callable[..., Transport], tmp_path: Path) -> None:
    path = short_path(tmp_path, "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a listener that died without removing its file
    dead.close()
    transport = make()
    acceptor = Acceptor()
    transport.listen(format_url(path), acceptor)
    FrameRecorder().start(transport.connect(format_url(path), WAIT)).send(Frame({}, b"through"))
    _, seen = acceptor.next(WAIT)
    assert body_of(seen.wait_frames(1, WAIT)[0]) == b"through"


def test_a_socket_file_someone_listens_on_is_not_taken_over(
    make: Callable[..., Transport], tmp_path: Path
) -> None:
    path = short_path(tmp_path, "busy.sock")
    first = make()
    first_acceptor = Acceptor()
    first.listen(format_url(path), first_acceptor)
    with pytest.raises(CellError, match="another listener"):
        make().listen(format_url(path), Acceptor())
    # The first listener still has its file, and takes links.
    FrameRecorder().start(first.connect(format_url(path), WAIT))
    first_acceptor.next(WAIT)


def test_a_path_that_is_not_a_socket_is_left_alone(
    make: Callable[..., Transport], tmp_path: Path
) -> None:
    path = Path(short_path(tmp_path, "notes.txt"))
    path.write_text("mine")
    with pytest.raises(CellError, match="not a socket"):
        make().listen(format_url(str(path)), Acceptor())
    assert path.read_text() == "mine"


def test_connecting_where_nobody_listens_is_unreachable(
    make: Callable[..., Transport], tmp_path: Path
) -> None:
    url = format_url(short_path(tmp_path, "nobody.sock"))
    with pytest.raises(TargetUnreachableError, match="no listener within"):
        make().connect(url, 0.3)


# --- links -------------------------------------------------------------------------------


def test_an_accepted_link_names_the_peer_process(make: Callable[..., Transport]) -> None:
    transport = make()
    link = open_link(transport, "uds://127.0.0.1:0", WAIT)
    # Both ends are in this process; the kernel tells the listener who dialed.
    assert link.server.peer == f"pid {os.getpid()} on {socket_path(link.listener.url)}"
    assert link.client.peer == link.listener.url


def test_bodies_land_in_the_buffers_the_owner_offers(make: Callable[..., Transport]) -> None:
    transport = make()
    buffers: list[bytearray] = []

    def provide(headers: dict[str, str], size: int) -> memoryview | None:
        if headers.get("into") != "mine":
            return None
        buffers.append(bytearray(size))
        return memoryview(buffers[-1])

    accepted: queue.Queue[FrameRecorder] = queue.Queue()

    def on_connection(conn: Connection) -> None:
        conn.admit()
        conn.receive_into(provide)
        accepted.put(FrameRecorder())
        accepted.queue[-1].start(conn)

    listener = transport.listen("uds://127.0.0.1:0", on_connection)
    client = transport.connect(listener.url, WAIT)
    client.start(lambda frame: None, lambda exc: None)
    body = bytes(range(256)) * 1024
    client.send(Frame({"into": "mine"}, body))
    client.send(Frame({"into": "yours"}, body))
    mine, yours = accepted.get(timeout=WAIT).wait_frames(2, WAIT)
    assert isinstance(mine.body, memoryview) and mine.body.obj is buffers[0]
    assert bytes(buffers[0]) == body
    assert isinstance(yours.body, bytearray) and bytes(yours.body) == body
    assert len(buffers) == 1


def test_a_sender_to_a_peer_that_never_reads_is_held_back_then_told(
    make: Callable[..., Transport],
) -> None:
    transport = make(send_timeout=0.5)
    unread: queue.Queue[Connection] = queue.Queue()
    # The owner never starts the link, so nothing is read from it.
    listener = transport.listen("uds://127.0.0.1:0", unread.put)
    client = transport.connect(listener.url, WAIT)
    client.start(lambda frame: None, lambda exc: None)
    unread.get(timeout=WAIT)
    mib = bytes(2**20)
    sent = 0
    with pytest.raises(TargetUnreachableError, match="has not read"):
        while sent < 256:
            client.send(Frame({}, mib))
            sent += 1
    # Memory stayed bounded: far fewer than 256 MiB were taken before the sender was held.
    assert sent < 32, sent


def test_a_closed_transport_listens_nowhere_and_leaves_no_folder(
    make: Callable[..., Transport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fresh socket files go under the temp folder; here, one this test can watch.
    short_path(tmp_path, "fl-uds-12345678/listener-1.sock")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    transport = make()
    transport.listen("uds://127.0.0.1:0", Acceptor())
    assert [p.name[:7] for p in tmp_path.iterdir()] == ["fl-uds-"]
    transport.close()
    with pytest.raises(CellError, match="closed"):
        transport.listen("uds://127.0.0.1:0", Acceptor())
    assert list(tmp_path.iterdir()) == []
