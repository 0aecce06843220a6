"""The shared transport contract, run against the built-in tcp transport."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fl_core.spec.transport import Transport
from fl_core.testing.transport_contract import TransportContract
from fl_plugins.transport_tcp.transport import TcpTransport


class TestTcpTransportContract(TransportContract):
    listen_url = "tcp://127.0.0.1:0"

    @pytest.fixture
    def transport_factory(self) -> Callable[[], Transport]:
        return TcpTransport
