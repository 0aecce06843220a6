"""The transport contract suite run against the in-process transport."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fl_core.spec.transport import Transport
from fl_core.testing.transport_contract import TransportContract
from fl_plugins.transport_inprocess.transport import InProcessTransport


class TestInProcessTransport(TransportContract):
    """Every contract test, against `InProcessTransport`."""

    listen_url = "inprocess://"
    # Only cells of this process can reach an in-process listener: there is no
    # stranger to admit, so the hostile-input and admission cases do not apply.
    accepts_remote_peers = False

    @pytest.fixture
    def transport_factory(self) -> Callable[[], Transport]:
        return InProcessTransport
