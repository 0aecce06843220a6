"""The `cell` pipe: its hook and options, the pipe contract over tcp and grpc, admission.

Every end is built as the runtime builds it: the pipe, then `use_transports`
with a maker of the installed transports by name.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from fl_core.errors import ConfigError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec import hookimpl
from fl_core.spec.pipe import PeerGoneError, Pipe, PipeError, PipeMessage, PipeSide
from fl_core.spec.transport import Transport
from fl_core.testing.pipe_contract import PipeContract
from fl_plugins.pipe_cell import hooks
from fl_plugins.pipe_cell.pipe import CellPipe

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
WAIT = 30.0
FQCN = "site-1.job1"
TOKEN = "s3cret-token"


def _installed(name: str, options: Mapping[str, Any]) -> Transport:
    transport: Transport = INSTALLED.create("transport", name, options, expect=Transport)
    return transport


INSTALLED = make_plugin_manager().registry()


def _pipe(*args: Any, **options: Any) -> CellPipe:
    """A cell pipe handed the installed transports, as the runtime hands them."""
    pipe = CellPipe(*args, **options)
    pipe.use_transports(_installed)
    return pipe


@pytest.fixture(params=["tcp", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestCellPipeContract(PipeContract):
    """The contract through the factory `pipe_cell` registers, over each transport.

    The trainer's end is built from the client job's end's `peer_options()`,
    which carry the URL the client job's cell really listens on.
    """

    component = "cell"
    plugin = "pipe_cell"
    send_waits_for_receiver = True

    @pytest.fixture
    def pipe_options(self, transport: str) -> dict[str, Any]:
        return {"transport": transport}


# --- the hook and options ---------------------------------------------------------


def _registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("pipe_cell", hooks)]).registry()


def test_the_hook_registers_cell_and_the_factory_builds_a_pipe() -> None:
    registry = _registry()
    assert registry.names("pipe") == {"cell": "pipe_cell"}
    options = {"fqcn": FQCN, "token": TOKEN, "transport": "grpc", "heartbeat_interval": 0.5}
    pipe = registry.create("pipe", "cell", options, expect=Pipe)
    assert isinstance(pipe, CellPipe)
    assert (pipe.heartbeat_interval, pipe.transport_name) == (0.5, "grpc")


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"fqcn": FQCN, "token": TOKEN, "colour": "red"}, "colour", "no such option"),
        ({"fqcn": FQCN, "token": ""}, "token", "must not be empty"),
        ({"fqcn": FQCN, "token": TOKEN, "url": 3}, "url", "expected str"),
        ({"fqcn": FQCN, "token": TOKEN, "transport": ""}, "transport", "must not be empty"),
        ({"fqcn": FQCN, "token": TOKEN, "heartbeat_timeout": 0}, "heartbeat_timeout", "positive"),
        ({"fqcn": FQCN, "token": TOKEN, "max_payload": 1.5}, "max_payload", "expected int"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(
    options: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        _registry().create("pipe", "cell", options)
    assert info.value.key == f"components.pipe.options.{key}"


def test_a_timeout_not_longer_than_the_interval_is_refused() -> None:
    with pytest.raises(PipeError, match="heartbeat_timeout"):
        CellPipe(FQCN, TOKEN, heartbeat_interval=2.0, heartbeat_timeout=1.0)


def test_a_passive_end_needs_a_url_and_one_nobody_listens_on_is_named() -> None:
    with pytest.raises(PipeError, match="needs the active side's url"):
        _pipe(FQCN, TOKEN).open("p", PipeSide.PASSIVE)
    nowhere = _pipe(
        FQCN, TOKEN, url="tcp://127.0.0.1:1", heartbeat_interval=0.1, heartbeat_timeout=0.5
    )
    with pytest.raises(
        PipeError, match=re.escape("cannot reach the active side at tcp://127.0.0.1:1")
    ):
        nowhere.open("p", PipeSide.PASSIVE)
    nowhere.close()
    with pytest.raises(PipeError, match="opened before"):
        nowhere.open("p", PipeSide.PASSIVE)


# --- admission ------------------------------------------------------------------------


@pytest.fixture
def active() -> Iterator[CellPipe]:
    pipe = _pipe(FQCN, TOKEN, url="tcp://127.0.0.1:0")
    pipe.open("job", PipeSide.ACTIVE)
    yield pipe
    pipe.close()


def _passive(active: CellPipe, token: str = TOKEN, name: str = "job", url: str = "") -> CellPipe:
    pipe = _pipe(FQCN, token, url=url or active.address)
    pipe.open(name, PipeSide.PASSIVE)
    return pipe


def _exchange(sender: Pipe, receiver: Pipe, message: PipeMessage) -> PipeMessage | None:
    sent: list[bool] = []
    thread = threading.Thread(target=lambda: sent.append(sender.send(message, WAIT)))
    thread.start()
    got = receiver.receive(WAIT)
    thread.join(WAIT)
    assert sent == [True]
    return got


def test_a_wrong_token_is_refused_and_the_right_trainer_still_gets_in(active: CellPipe) -> None:
    with pytest.raises(PipeError, match=r"refused this end's cell \(a wrong token"):
        _passive(active, token="guess")
    with pytest.raises(PipeError, match="asked for pipe 'other'"):
        _passive(active, name="other")
    assert not active.peer_alive()
    right = _passive(active)
    try:
        assert active.peer_alive()
        got = _exchange(right, active, PipeMessage("hi", {"a": "1"}, b"data"))
        assert got is not None and (got.topic, got.headers) == ("hi", {"a": "1"})
        assert bytes(got.body) == b"data"  # type: ignore[call-overload]
        back = _exchange(active, right, PipeMessage("back", body={"x": [1]}))
        assert back is not None and back.body == {"x": [1]}
    finally:
        right.close()


def test_a_second_trainer_is_refused_while_one_is_admitted(active: CellPipe) -> None:
    first = _passive(active)
    try:
        with pytest.raises(PipeError, match=r"refused this end's cell.*already connected"):
            _passive(active)
        got = _exchange(first, active, PipeMessage("still-here"))
        assert got is not None and got.topic == "still-here"
    finally:
        first.close()
    with pytest.raises(PeerGoneError, match="closed its end"):
        active.receive(WAIT)
    with pytest.raises(PipeError, match="a trainer was admitted already"):
        _passive(active)


def test_pipe_headers_do_not_clash_with_cell_headers(active: CellPipe) -> None:
    passive = _passive(active)
    try:
        headers = {"origin": "forged", "topic": "x", "destination": "server", "msg_id": "1"}
        got = _exchange(passive, active, PipeMessage("t", headers, None))
        assert got is not None and got.headers == headers and got.topic == "t"
    finally:
        passive.close()


def test_a_message_whose_sender_gave_up_is_not_handed_out(active: CellPipe) -> None:
    passive = _passive(active)
    try:
        assert passive.send(PipeMessage("too-late"), 0.2) is False
        got = _exchange(passive, active, PipeMessage("in-time"))
        assert got is not None and got.topic == "in-time"
    finally:
        passive.close()


# --- transports by name -------------------------------------------------------------


def test_an_end_given_no_transports_refuses_to_open() -> None:
    pipe = CellPipe(FQCN, TOKEN, url="tcp://127.0.0.1:0")
    with pytest.raises(PipeError, match=r"no way to make its 'tcp' transport.*use_transports"):
        pipe.open("job", PipeSide.ACTIVE)
    pipe.close()


def test_an_unknown_transport_is_refused_at_open_naming_what_is_installed() -> None:
    pipe = _pipe(FQCN, TOKEN, transport="udp")
    with pytest.raises(PipeError, match=r"cannot make transport 'udp'.*tcp") as info:
        pipe.open("job", PipeSide.ACTIVE)
    assert "grpc" in str(info.value)
    pipe.close()


class _Loopback:
    """A plugin providing `loopback`, a transport the cell pipe has never heard of."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def make(self, **options: Any) -> Transport:
        from fl_plugins.transport_tcp.transport import TcpTransport

        self.made.append("loopback")
        return TcpTransport(**options)

    @hookimpl
    def fl_core_register_transports(self, register: Any) -> None:
        register("loopback", self.make)


def test_the_pipe_runs_over_whichever_transport_its_option_names() -> None:
    plugin = _Loopback()
    registry = make_plugin_manager(autoload=False, extra=[("loopback", plugin)]).registry()

    def make(name: str, options: Mapping[str, Any]) -> Transport:
        made: Transport = registry.create("transport", name, options, expect=Transport)
        return made

    ends = []
    for side in (PipeSide.ACTIVE, PipeSide.PASSIVE):
        url = ends[0].address if ends else "tcp://127.0.0.1:0"
        end = CellPipe(FQCN, TOKEN, url=url, transport="loopback")
        end.use_transports(make)
        end.open("job", side)
        ends.append(end)
    try:
        assert plugin.made == ["loopback", "loopback"]
        assert ends[0].peer_options()["transport"] == "loopback"
        got = _exchange(ends[1], ends[0], PipeMessage("over-loopback", body=b"x"))
        assert got is not None and got.topic == "over-loopback"
    finally:
        for end in reversed(ends):
            end.close()


# --- the token never travels ---------------------------------------------------------


class _Tap:
    """A TCP forwarder for one link that keeps every byte it passes, both ways."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        self._socks = [self._server]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            down, _ = self._server.accept()
        except OSError:
            return
        up = socket.create_connection(self._target)
        self._socks += [down, up]
        for src, dst in ((down, up), (up, down)):
            thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.seen += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
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


def test_the_token_never_travels_between_the_ends(active: CellPipe) -> None:
    tap = _Tap(active.address)
    try:
        passive = _passive(active, url=tap.url)
        try:
            got = _exchange(passive, active, PipeMessage("through-the-tap", body=b"seen"))
            assert got is not None and got.topic == "through-the-tap"
        finally:
            passive.close()
    finally:
        tap.close()
    seen = bytes(tap.seen)
    assert b"through-the-tap" in seen and f"{FQCN}.trainer".encode() in seen
    assert TOKEN.encode() not in seen
    assert TOKEN.encode().hex().encode() not in seen


def test_only_the_trainer_cell_may_join_even_with_the_token(active: CellPipe) -> None:
    from fl_core.cell.cell import Cell
    from fl_core.errors import CellError

    stranger = Cell(f"{FQCN}.other", _installed("tcp", {}))
    try:
        with pytest.raises(CellError, match=f"only {re.escape(FQCN)}.trainer may join"):
            stranger.connect_parent(active.address, 10, reconnect=False, key=TOKEN.encode())
    finally:
        stranger.close()
        stranger.transport.close()
    assert not active.peer_alive()
    right = _passive(active)
    try:
        assert active.peer_alive()
    finally:
        right.close()
