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
}
"""What a job config may set (YAML types). `credentials` is passed by code only."""


def _type_ok(value: object, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    return isinstance(value, int | float if expected is float else expected)


def _make_grpc(**options: Any) -> Transport:
    from fl_core.errors import ConfigError
    from fl_core.spec.security import Credentials

    credentials = options.pop("credentials", None)
    if credentials is not None and not isinstance(credentials, Credentials):
        raise ConfigError(
            "credentials",
            "",
            f"expected fl_core.spec.security.Credentials, got {type(credentials).__name__}",
        )
    for name, value in options.items():
        expected = _OPTIONS.get(name)
        key = f"components.transport.options.{name}"
        if expected is None:
            raise ConfigError(
                "job.yaml", key, f"`grpc` has no such option; known: {', '.join(sorted(_OPTIONS))}"
            )
        if not _type_ok(value, expected):
            raise ConfigError("job.yaml", key, f"expected {expected.__name__}, got {value!r}")
        if expected in (int, float) and value <= 0:
            raise ConfigError("job.yaml", key, f"must be positive, got {value!r}")
        if expected is str and not value:
            raise ConfigError("job.yaml", key, "must not be empty")
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
