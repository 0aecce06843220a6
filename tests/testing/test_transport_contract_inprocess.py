"""The transport contract suite run against `inprocess` through its registered factory."""

from __future__ import annotations

from fl_core.testing.transport_contract import TransportContract


class TestInProcessTransport(TransportContract):
    """Every contract test, against the transport `inprocess` registers."""

    listen_url = "inprocess://"
    component = "inprocess"
    plugin = "transport_inprocess"
    # Only cells of this process can reach an in-process listener: there is no
    # stranger to admit, so the hostile-input and admission cases do not apply.
    accepts_remote_peers = False
