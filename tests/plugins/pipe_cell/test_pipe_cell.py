"""The `cell` pipe: its hook and options, the pipe contract over tcp and grpc, admission."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fl_core.errors import ConfigError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec.pipe import PeerGoneError, Pipe, PipeError, PipeMessage, PipeSide
from fl_core.testing.pipe_contract import PipeContract
from fl_plugins.pipe_cell import hooks
from fl_plugins.pipe_cell.pipe import CellPipe

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
WAIT = 30.0
FQCN = "site-1.job1"
TOKEN = "s3cret-token"


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
        ({"fqcn": FQCN, "token": TOKEN, "transport": "udp"}, "transport", "one of tcp, grpc"),
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
        CellPipe(FQCN, TOKEN).open("p", PipeSide.PASSIVE)
    nowhere = CellPipe(
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
    pipe = CellPipe(FQCN, TOKEN, url="tcp://127.0.0.1:0")
    pipe.open("job", PipeSide.ACTIVE)
    yield pipe
    pipe.close()


def _passive(active: CellPipe, token: str = TOKEN, name: str = "job") -> CellPipe:
    pipe = CellPipe(FQCN, token, url=active.address)
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
    with pytest.raises(PipeError, match=r"refused.*token it presented is wrong"):
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
