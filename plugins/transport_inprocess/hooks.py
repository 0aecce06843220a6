"""Registers the `inprocess` transport."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.transport import Transport


def _make_inprocess(**options: Any) -> Transport:
    if options:
        from fl_core.errors import ConfigError

        raise ConfigError(
            "job.yaml",
            f"components.transport.options.{sorted(options)[0]}",
            "`inprocess` takes no options",
        )
    from fl_plugins.transport_inprocess.transport import InProcessTransport

    return InProcessTransport()


@hookimpl
def fl_core_register_transports(register: Register) -> None:
    """Provide `inprocess`: cells in one process, frames handed over by reference."""
    register("inprocess", _make_inprocess)
