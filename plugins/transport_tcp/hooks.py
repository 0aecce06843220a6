"""Registers the `tcp` transport."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.transport import Transport

_OPTIONS = {
    "tls": bool,
    "certfile": str,
    "keyfile": str,
    "cafile": str,
    "require_client_cert": bool,
    "server_name": str,
    "max_body_size": int,
    "send_timeout": float,
    "handshake_timeout": float,
    "hello_timeout": float,
    "max_unadmitted": int,
}
"""What a job config may set (YAML types). `credentials` is passed by code only."""


def _make_tcp(**options: Any) -> Transport:
    from fl_core.config.options import check_options, take_credentials

    credentials = take_credentials(options)
    check_options("transport", "tcp", options, _OPTIONS)
    from fl_plugins.transport_tcp.transport import TcpTransport

    return TcpTransport(credentials=credentials, **options)


@hookimpl
def fl_core_register_transports(register: Register) -> None:
    """Provide `tcp`: frames over TCP, with (mutual) TLS when `tls: true`."""
    register("tcp", _make_tcp)
