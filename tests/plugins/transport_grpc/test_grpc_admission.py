"""What an unadmitted gRPC stream can make a listener hold, measured in a real child process.

gRPC reads a whole message before the handler sees it, and lets a peer send
as much as the message it announced needs. A raw gRPC client (not this
transport) announcing 16 MiB first messages on several streams must not make
the listener's peak memory grow by anything like 16 MiB per stream.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grpc import aio

from fl_core.serialization.envelope import BodyKind, encode_frame_head
from fl_plugins.transport_grpc.dial import METHOD, SERVICE

WAIT = 10.0
STREAMS = 8
ANNOUNCED = 16 * 2**20

LISTENER = textwrap.dedent(
    """
    import sys
    from fl_plugins.transport_grpc.transport import GrpcTransport

    transport = GrpcTransport()
    # An owner that never admits: every stream stays unadmitted.
    listener = transport.listen("grpc://127.0.0.1:0", lambda conn: conn.start(
        lambda frame: None, lambda exc: None))
    print(listener.url, flush=True)
    sys.stdin.read()  # until the test closes it
    transport.close()
    """
)


def peak_rss(pid: int) -> int:
    """The peak resident memory of `pid` so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


async def _announce_big_messages(address: str) -> list[str]:
    """Each stream sends one frame announcing (and carrying) 16 MiB; how each call ended."""
    head = encode_frame_head({"fl-control": "hello"}, BodyKind.BYTES, ANNOUNCED)
    message = head + bytes(ANNOUNCED)
    options = [("grpc.max_send_message_length", 2 * len(message))]
    channels = [aio.insecure_channel(address, options=options) for _ in range(STREAMS)]

    async def one(channel: aio.Channel) -> str:
        call = channel.stream_stream(f"/{SERVICE}/{METHOD}")()
        try:
            async with asyncio.timeout(WAIT):
                await call.write(message)
                await call.done_writing()
                return (await call.code()).name
        except aio.AioRpcError as exc:
            return exc.code().name
        except TimeoutError:
            call.cancel()
            return "still open"

    try:
        return await asyncio.gather(*(one(channel) for channel in channels))
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.e2e
def test_unadmitted_streams_announcing_16_mib_cost_the_listener_little() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", LISTENER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        url = child.stdout.readline().strip()
        assert url.startswith("grpc://"), url
        before = peak_rss(child.pid)
        endings = asyncio.run(_announce_big_messages(url.removeprefix("grpc://")))
        grown = peak_rss(child.pid) - before
        assert "still open" not in endings, endings
        assert "OK" not in endings, endings
        # Before fragments and a fixed window: about 26 MiB per stream.
        assert grown < STREAMS * 2**20, (
            f"{STREAMS} unadmitted streams grew the listener's peak RSS by "
            f"{grown / 2**20:.1f} MiB ({endings})"
        )
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(WAIT)
        if child.stdout is not None:
            child.stdout.close()
