"""The shared transport contracts, run against `grpc` through its registered factory."""

from __future__ import annotations

import pytest

from fl_core.testing.transport_contract import TransportContract
from fl_core.testing.transport_contract_security import (
    HostileInputContract,
    SecureTransportContract,
)

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")


class TestGrpcTransportContract(TransportContract, SecureTransportContract, HostileInputContract):
    listen_url = "grpc://127.0.0.1:0"
    component = "grpc"
    plugin = "transport_grpc"
