"""Registers the `inprocess` transport."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl


def _make_inprocess(**options: Any) -> Any:
    from fl_plugins.transport_inprocess.transport import InProcessTransport

    return InProcessTransport(**options)


@hookimpl
def fl_core_register_transports(register: Register) -> None:
    """Provide `inprocess`: cells in one process, frames handed over by reference."""
    register("inprocess", _make_inprocess)
