"""What a listener spends on links that have not said hello: memory per idle socket.

A listener runs in its own process; this process opens `--links` idle TCP
sockets to it (connect, send nothing) and reads the listener's RSS from
/proc before and once they are all accepted. Each fl-core transport is run
twice: with its admission limits lifted (cap above `--links`, a long hello
timeout), which gives the cost of one unadmitted link, and with its default
limits (cap 256, 10 s), which gives what a flood of that size really costs.
The baseline, measured in the same run, is a bare asyncio server whose
protocol holds each accepted socket and nothing else.

    .venv/bin/python bench/admission.py                 # 2,000 links
    .venv/bin/python bench/admission.py --links 500
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KiB = 1024


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    return 0


def role_listener(kind: str, links: int, limited: bool) -> None:
    """Listen, print the port, hold whatever connects until stdin closes."""
    import logging

    logging.disable(logging.WARNING)  # the cap's warning is expected here
    if kind == "raw":
        import asyncio

        async def serve() -> None:
            held: list[asyncio.BaseTransport] = []

            class Hold(asyncio.Protocol):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    held.append(transport)

            server = await asyncio.get_running_loop().create_server(Hold, "127.0.0.1", 0)
            print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            server.close()

        asyncio.run(serve())
        return
    options: dict[str, Any] = {}
    if not limited:
        options = {"max_unadmitted": links + 1, "hello_timeout": 600.0}
    if kind == "tcp":
        from fl_plugins.transport_tcp.transport import TcpTransport

        transport: Any = TcpTransport(**options)
    else:
        from fl_plugins.transport_grpc.transport import GrpcTransport

        transport = GrpcTransport(**options)
    listener = transport.listen(f"{kind}://127.0.0.1:0", lambda conn: conn.start(print, print))
    print(json.dumps({"port": int(listener.url.rsplit(":", 1)[1])}), flush=True)
    sys.stdin.read()
    transport.close()


def measure(kind: str, links: int, limited: bool) -> float:
    """RSS growth of the listener, in bytes per idle socket opened."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--role", kind, str(links), "1" if limited else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    port = json.loads(child.stdout.readline())["port"]
    time.sleep(0.5)  # let the child's start-up allocations settle before the baseline
    before = _rss(child.pid)
    socks = []
    try:
        for _ in range(links):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5.0))
        time.sleep(1.0)  # let the listener accept and set up what it will for each
        grown = _rss(child.pid) - before
    finally:
        for sock in socks:
            sock.close()
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    return grown / links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--links", type=int, default=2000)
    args = parser.parse_args()
    if args.role:
        role_listener(args.role[0], int(args.role[1]), args.role[2] == "1")
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.links + 256)), hard))
    links = args.links
    raw = measure("raw", links, False)
    print(f"{links} idle sockets; RSS growth of the listener per socket")
    print(f"bare asyncio server holding each socket: {raw / KiB:.1f} KiB (the baseline)")
    for kind in ("tcp", "grpc"):
        for limited in (False, True):
            per = measure(kind, links, limited)
            label = "default limits" if limited else "limits lifted"
            ratio = per / raw if raw > 0 else float("nan")
            total = per * links / 2**20
            print(
                f"  {kind} ({label}): {per / KiB:.1f} KiB = {ratio:.2f}x baseline; "
                f"{total:.1f} MiB in all"
            )


if __name__ == "__main__":
    main()
