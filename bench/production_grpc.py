"""`bench/production.py --part throughput`: what gRPC alone does with the same bytes.

A raw grpcio (asyncio) client stream of `size` bytes over mutual TLS, in
messages of a given size (identity serializers, no framework code), to a
server in another process that only counts them. With messages of
`FRAGMENT` bytes (64 KiB: the most a grpc listener takes from a dialer, the
admission rule) it is the ceiling of a site's upload over grpc; with 2 MiB
messages (what the server sends down: one chunk per message) it shows what
the admission rule costs.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

SERVICE_METHOD = "/bench.Sink/Push"


def _identity(data: bytes) -> bytes:
    return data


def _read(folder: str, who: str) -> tuple[bytes, bytes, bytes]:
    path = Path(folder)
    return tuple(  # type: ignore[return-value]
        (path / name).read_bytes() for name in (f"{who}.pem", f"{who}.key", "ca.pem")
    )


def role_grpc_sink(folder: str) -> None:
    """A grpc server with mutual TLS whose one method counts the bytes streamed to it."""
    import grpc
    from grpc import aio

    async def serve() -> None:
        cert, key, ca = _read(folder, "server")

        async def push(requests: Any, _context: Any) -> bytes:
            total = 0
            async for message in requests:
                total += len(message)
            return total.to_bytes(8, "big")

        handler = grpc.stream_unary_rpc_method_handler(
            push, request_deserializer=_identity, response_serializer=_identity
        )
        server = aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        service, method = SERVICE_METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
        creds = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        print(json.dumps({"port": port}), flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


def role_grpc_push(folder: str, port: int, size: int, message: int, count: int) -> None:
    """Stream `size` bytes in `message`-byte messages, `count` times; the seconds of each."""
    import grpc
    from grpc import aio

    async def push() -> list[float]:
        cert, key, ca = _read(folder, "site-0")
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        seconds = []
        async with aio.secure_channel(
            f"localhost:{port}", creds, options=[("grpc.max_send_message_length", -1)]
        ) as channel:
            payload = bytes(message)
            for _ in range(count):
                call = channel.stream_unary(
                    SERVICE_METHOD, request_serializer=_identity, response_deserializer=_identity
                )()
                start = time.perf_counter()
                for _ in range(size // message):
                    await call.write(payload)
                await call.done_writing()
                got = int.from_bytes(await call, "big")
                seconds.append(time.perf_counter() - start)
                assert got == size // message * message, got
        return seconds

    print(json.dumps({"up": asyncio.run(push())}), flush=True)
