"""fl-core's transport contracts, run on `uds` as fl-core finds it: through its entry point.

The transport is never imported here: a plugin manager loads the installed
distribution's `fl_core` entry point, and each transport is built with
`registry.create("transport", "uds", options)`, so the hook, the options
and the class are all under contract.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from fl_transport_uds.urls import socket_path

from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec.transport import Transport

# Where the contract suites and their helpers live today: the one place to change
# when they move (test_uds_transport takes the helpers from here).
from fl_core.testing.transport_contract import (
    Acceptor,
    FrameRecorder,
    TransportContract,
    open_link,
)
from fl_core.testing.transport_contract_security import HostileInputContract

__all__ = ["Acceptor", "FrameRecorder", "TestUdsTransportContract", "open_link", "uds_registry"]


def uds_registry() -> Registry:
    """The registry of every installed plugin; fails plainly if `uds` is not installed."""
    registry = make_plugin_manager(autoload=True).registry()
    if "uds" not in registry.names("transport"):
        pytest.fail(
            "the uds transport is not installed: pip install ./tests/thirdparty_transport "
            "(make test does)"
        )
    return registry


class TestUdsTransportContract(TransportContract, HostileInputContract):
    listen_url = "uds://127.0.0.1:0"

    @pytest.fixture
    def transport_factory(self) -> Callable[..., Transport]:
        registry = uds_registry()

        def make(**options: Any) -> Transport:
            transport = registry.create("transport", "uds", options, expect=Transport)
            assert isinstance(transport, Transport)
            return transport

        return make

    def raw_connection(self, url: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.wait)
        sock.connect(socket_path(url))
        return sock
