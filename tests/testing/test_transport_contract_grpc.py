"""The shared transport contracts, run against the built-in grpc transport."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fl_core.spec.security import Credentials
from fl_core.spec.transport import Transport
from fl_core.testing.transport_contract import TransportContract
from fl_core.testing.transport_contract_security import (
    HostileInputContract,
    SecureTransportContract,
)
from fl_plugins.transport_grpc.transport import GrpcTransport

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")


class TestGrpcTransportContract(TransportContract, SecureTransportContract, HostileInputContract):
    listen_url = "grpc://127.0.0.1:0"

    @pytest.fixture
    def transport_factory(self) -> Callable[[], Transport]:
        return GrpcTransport

    @pytest.fixture
    def secure_transport_factory(self) -> Callable[[Credentials, bool], Transport]:
        def make(credentials: Credentials, require_client_cert: bool) -> Transport:
            return GrpcTransport(credentials=credentials, require_client_cert=require_client_cert)

        return make
