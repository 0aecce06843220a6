"""Registers the `grpc` transport."""

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
    "keepalive_time": float,
    "keepalive_timeout": float,
    "hello_timeout": float,
    "max_unadmitted": int,
    "receive_window": int,
}
"""What a job config may set (YAML types). `credentials` is passed by code only."""


def _make_grpc(**options: Any) -> Transport:
    from fl_core.config.options import check_options, take_credentials

    credentials = take_credentials(options)
    check_options("transport", "grpc", options, _OPTIONS)
    # grpcio is imported here, when a job uses the transport, never at plugin load.
    from fl_plugins.transport_grpc.transport import GrpcTransport

    return GrpcTransport(credentials=credentials, **options)


@hookimpl
def fl_core_register_transports(register: Register) -> None:
    """Provide `grpc`: frames over gRPC streams, with (mutual) TLS when `tls: true`."""
    register(
        "grpc",
        _make_grpc,
        requires=("grpc",),
        install="pip install 'grpcio>=1.85'",
    )
