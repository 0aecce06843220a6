"""Registers the `uds` transport. Import-light: the transport is imported when a job uses it."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.transport import Transport

OPTIONS = {
    "max_body_size": int,
    "send_timeout": float,
    "hello_timeout": float,
    "max_unadmitted": int,
}
"""What a job or federation config may set, with their YAML types."""


def make_uds(**options: Any) -> Transport:
    """Build a `UdsTransport` from config options (`ConfigError` naming a bad one)."""
    from fl_core.config.options import check_options, take_credentials
    from fl_core.errors import ConfigError

    if take_credentials(options) is not None:
        # Who may connect is decided by the socket file's mode; there is no TLS to set up.
        raise ConfigError(
            "job.yaml",
            "components.transport",
            "the uds transport has no TLS: it links processes of one user on one machine, "
            "through socket files only that user can open; use tcp or grpc for TLS",
        )
    check_options("transport", "uds", options, OPTIONS)
    from fl_transport_uds.transport import UdsTransport

    return UdsTransport(**options)


@hookimpl
def fl_core_register_transports(register: Register) -> None:
    """Provide `uds`: frames over Unix domain sockets on this machine."""
    register("uds", make_uds)
