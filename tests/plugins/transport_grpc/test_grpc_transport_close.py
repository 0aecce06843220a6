"""Closing the grpc transport right after, or during, a connect that finds nobody.

gRPC's asyncio poller thread runs while any gRPC asyncio object lives in the
process; `fl_no_threads_left` fails a test whose transport leaves one behind.
"""

from __future__ import annotations

import socket
import threading

import pytest

from fl_core.errors import TargetUnreachableError
from fl_plugins.transport_grpc.transport import GrpcTransport

WAIT = 10.0
"""Bounds every wait; reached only when something is broken."""
ATTEMPTS = 30
"""Connects per test: a transport closed too early left gRPC's thread behind on a few of them."""
pytestmark = pytest.mark.usefixtures("fl_no_threads_left")


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"grpc://127.0.0.1:{probe.getsockname()[1]}"


def test_closing_right_after_a_failed_connect_leaves_no_grpc_thread() -> None:
    for _ in range(ATTEMPTS):
        transport = GrpcTransport()
        try:
            with pytest.raises(TargetUnreachableError):
                transport.connect(_dead_url(), 0.05)
        finally:
            transport.close()


def test_closing_during_a_connect_ends_it_and_leaves_no_grpc_thread() -> None:
    transport = GrpcTransport()
    outcome: list[BaseException | object] = []

    def connect(url: str) -> None:
        try:
            outcome.append(transport.connect(url, WAIT))
        except BaseException as exc:
            outcome.append(exc)

    # A TCP listener that never speaks HTTP/2: gRPC's connection to it is
    # proof that the connect is under way, and it never gets an answer.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(WAIT)
        url = f"grpc://127.0.0.1:{silent.getsockname()[1]}"
        caller = threading.Thread(target=connect, args=(url,), name="connect")
        caller.start()
        try:
            accepted, _ = silent.accept()
            with accepted:
                transport.close()
                caller.join(WAIT)
                assert not caller.is_alive(), "connect went on after the transport closed"
        finally:
            transport.close()
            caller.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], TargetUnreachableError), outcome
    assert "closed" in str(outcome[0])
