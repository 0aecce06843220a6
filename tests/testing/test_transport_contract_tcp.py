"""The shared transport contracts, run against `tcp` through its registered factory."""

from __future__ import annotations

from fl_core.testing.transport_contract import TransportContract
from fl_core.testing.transport_contract_security import (
    HostileInputContract,
    SecureTransportContract,
)


class TestTcpTransportContract(TransportContract, SecureTransportContract, HostileInputContract):
    listen_url = "tcp://127.0.0.1:0"
    component = "tcp"
    plugin = "transport_tcp"
