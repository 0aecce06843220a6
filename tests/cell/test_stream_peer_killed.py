"""A peer process killed (SIGKILL) in the middle of a stream, over tcp and grpc."""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Message
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.model import FLModel
from fl_core.spec.transport import Transport
from fl_core.testing.stream_contract import wait_until
from fl_plugins.transport_grpc.transport import GrpcTransport
from fl_plugins.transport_tcp.transport import TcpTransport

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("fl_no_threads_left")]

AUX = Channel.AUX_COMMUNICATION
WAIT = 20.0
TRANSPORTS = {"tcp": TcpTransport, "grpc": GrpcTransport}

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel
    from fl_core.model import FLModel

    role, scheme, url = sys.argv[1:4]
    if scheme == "tcp":
        from fl_plugins.transport_tcp.transport import TcpTransport as T
    else:
        from fl_plugins.transport_grpc.transport import GrpcTransport as T
    cell = Cell("site-1", T())
    cell.connect_parent(url)
    if role == "receiver":
        def die(message):
            for _ in message.payload.arrays():
                os.kill(os.getpid(), signal.SIGKILL)
        cell.register_handler(Channel.AUX_COMMUNICATION, "sink", die, streaming=True)
        print("ready", flush=True)
        sys.stdin.read()
    else:
        model = FLModel(params={f"a{i}": np.full(1 << 20, i, np.float32) for i in range(64)})
        print("sending", flush=True)
        cell.request("server", Channel.AUX_COMMUNICATION, "sink", model, timeout=60)
    """
)


@pytest.fixture(params=sorted(TRANSPORTS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Cell, str]]:
    transport: Transport = TRANSPORTS[request.param]()
    cell = Cell("server", transport)
    url = cell.listen(f"{request.param}://127.0.0.1:0")
    yield cell, url
    cell.close()
    transport.close()


def _child(role: str, url: str) -> subprocess.Popen[str]:
    scheme = url.split(":", 1)[0]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, role, scheme, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() in ("ready", "sending")
    return child


def test_killing_the_receiver_mid_stream_fails_the_request_naming_it(
    server: tuple[Cell, str],
) -> None:
    cell, url = server
    child = _child("receiver", url)
    try:
        wait_until(lambda: cell.children() == ["site-1"], WAIT, "site-1 to connect")
        model = FLModel(params={f"a{i}": np.full(1 << 20, i, np.float32) for i in range(64)})
        future = cell.request_async("site-1", AUX, "sink", model, timeout=120.0)
        error = future.exception(WAIT)
        assert isinstance(error, TargetUnreachableError), error
        assert error.fqcn == "site-1"
        assert child.wait(WAIT) == -9
        wait_until(lambda: not any(cell.streams_in_flight().values()), WAIT, "the stream to go")
    finally:
        child.kill()
        child.wait(WAIT)


def test_killing_the_sender_mid_stream_breaks_off_the_payload(server: tuple[Cell, str]) -> None:
    cell, url = server
    events: queue.Queue[object] = queue.Queue()
    go_on: queue.Queue[str] = queue.Queue()

    def stall(message: Message) -> None:
        assert isinstance(message.payload, IncomingPayload)
        try:
            for index, _ in enumerate(message.payload.arrays()):
                if index == 0:
                    events.put("first")
                    go_on.get(timeout=WAIT)
        except CellError as exc:
            events.put(exc)

    cell.register_handler(AUX, "sink", stall, streaming=True)
    child = _child("sender", url)
    try:
        assert events.get(timeout=WAIT) == "first"
        child.kill()
        child.wait(WAIT)
        wait_until(lambda: cell.children() == [], WAIT, "the sender's link to close")
        go_on.put("go on")
        error = events.get(timeout=WAIT)
        assert isinstance(error, CellError), error
        assert "from site-1 broke off" in str(error)
        wait_until(lambda: not any(cell.streams_in_flight().values()), WAIT, "the stream to go")
    finally:
        child.kill()
        child.wait(WAIT)
