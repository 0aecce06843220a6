"""The gRPC method a link is, and how the dialing end opens one.

A link is one call of `/fl_core.Link/Frames`, a stream-stream method whose
messages are raw bytes (identity serializers). A listener that takes a call
answers with the `ACCEPTED` initial metadata at once: that is the connect
handshake, so a dialing end knows a listener (not merely a gRPC server) took
it. The dialing end opens its own channel per link and retries, with
backoff, until a listener accepts or its deadline passes.
"""

from __future__ import annotations

import asyncio
from typing import Final

import grpc
from grpc import aio

from fl_core.errors import TargetUnreachableError
from fl_core.spec.security import Credentials
from fl_core.tls_names import describe_names, name_mismatch_message
from fl_plugins.transport_grpc import tls as tls_material

__all__ = [
    "ACCEPTED",
    "BACKOFF_MAX",
    "BACKOFF_START",
    "METHOD",
    "SERVICE",
    "address",
    "dial",
    "identity",
]

SERVICE: Final = "fl_core.Link"
METHOD: Final = "Frames"
ACCEPTED: Final = ("fl-core-link", "accepted")
"""Initial metadata a listener sends when it takes a stream: the connect handshake."""
BACKOFF_START: Final = 0.05
BACKOFF_MAX: Final = 1.0
_NAME_MISMATCH: Final = "the TLS name check failed"
_UNTRUSTED: Final = "TLS: the server certificate is not from a CA this end trusts"


def identity(data: bytes) -> bytes:
    """The (de)serializer of a link's messages: they are the frames' bytes already."""
    return data


def address(host: str, port: int) -> str:
    """gRPC's form of a host and port (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def dial(
    host: str,
    port: int,
    url: str,
    timeout: float,
    *,
    credentials: Credentials | None,
    options: list[tuple[str, int | str]],
    server_name: str | None = None,
) -> tuple[aio.Channel, aio.StreamStreamCall[bytes, bytes]]:
    """A new channel to `host:port` and a call on it that a listener accepted.

    Raises `TargetUnreachableError` if no listener accepted one within
    `timeout` seconds, or at once if the listener's certificate does not
    name `server_name` (default: `host`); `asyncio.CancelledError` (the
    channel closed first) if the transport stops it.
    """
    loop = asyncio.get_running_loop()
    target = address(host, port)
    if credentials is None:
        channel = aio.insecure_channel(target, options=options)
    else:
        creds = tls_material.channel_credentials(credentials)
        channel = aio.secure_channel(target, creds, options=options)
    cancelled = False
    try:
        call, why = await _open_call(channel, loop.time() + timeout)
    except asyncio.CancelledError:
        # The transport is closing, or the caller stopped waiting. Not
        # re-raised here: this exception's traceback holds the call.
        call, why, cancelled = None, "", True
    except BaseException:
        await channel.close()
        raise
    if call is None:
        await channel.close()
        # Raised outside any handler and with no gRPC object left in this frame:
        # a traceback that kept one alive would keep gRPC's poller thread too.
        del channel
        if cancelled:
            raise asyncio.CancelledError
        if why == _NAME_MISMATCH:
            names = await describe_names(host, port, alpn=("h2",))
            why = name_mismatch_message(server_name or host, names)
            raise TargetUnreachableError(url, why)
        if why.startswith(_UNTRUSTED):
            raise TargetUnreachableError(url, why)
        raise TargetUnreachableError(url, f"could not connect within {timeout:g} s ({why})")
    return channel, call


async def _open_call(
    channel: aio.Channel, deadline: float
) -> tuple[aio.StreamStreamCall[bytes, bytes] | None, str]:
    """Open the link's call; (call, "") once a listener took it, else (None, why not)."""
    loop = asyncio.get_running_loop()
    delay = BACKOFF_START
    why = "nobody answered"
    while True:
        call: aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(
            f"/{SERVICE}/{METHOD}",
            request_serializer=identity,
            response_deserializer=identity,
        )(wait_for_ready=False)
        code = grpc.StatusCode.UNKNOWN
        try:
            async with asyncio.timeout_at(deadline):
                metadata = await call.initial_metadata()
                if ACCEPTED in tuple(metadata or ()) and not call.done():
                    return call, ""
                code = await call.code()
                why = f"{code.name}: {await call.details()}"
        except TimeoutError:
            call.cancel()
            return None, why
        except aio.AioRpcError as exc:
            code, why = exc.code(), f"{exc.code().name}: {exc.details()}"
        call.cancel()
        if tls_material.NAME_MISMATCH in why:
            # Retrying cannot help: the listener holds another participant's certificate.
            return None, _NAME_MISMATCH
        if tls_material.UNTRUSTED in why:
            # Nor here: the listener's certificate is not one our CA vouches for.
            return None, f"{_UNTRUSTED}: {why}"
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED):
            return None, f"not an fl-core grpc listener: {why}"
        if loop.time() + delay >= deadline:
            return None, why
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)
