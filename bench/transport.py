"""Cell transports between processes: throughput, request rate, memory.

Every case runs its sender, receiver (and relay) as separate processes on
loopback and is compared with a baseline measured in the same run:

- a 1 GiB model (one float32 array) sent as a cell request from one process
  to another over tcp (and grpc, when installed), `--repeat` + 1 times in one
  pair of processes. The first lands in fresh memory and is compared with
  plain socket `sendall` -> `recv_into` into a fresh buffer; the later ones
  land in the memory the previous model left (as every round after the
  first does) and are compared with `recv_into` a touched, preallocated
  buffer. grpc is also compared with a raw grpcio bidi stream of the same
  bytes, its own ceiling. With `--tls` the pairs run again over mutual TLS,
  against a TLS socket;
- the same model through a relay process (sender -> relay -> receiver),
  reporting how much the relay's peak RSS grew while forwarding it;
- small request/reply round trips per second (100 B, one thread) over each
  transport, against a plain grpcio unary echo with raw-bytes serializers.

Peak RSS is each process's own `ru_maxrss`; "growth" is that peak minus the
RSS the process had once it was connected and before the payload moved.

    .venv/bin/python bench/transport.py              # 1 GiB, median of 3
    .venv/bin/python bench/transport.py --size-mib 256 --repeat 1 --tls
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
CHUNK = 4 * MiB
ECHO_METHOD = "/bench.Echo/Call"
STREAM_METHOD = "/bench.Stream/Call"
GRPC_MESSAGE = 2 * MiB  # the cell's chunk size
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


# --- helpers used inside the role processes ----------------------------------------


def _rss_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _wait_stdin_closed() -> None:
    sys.stdin.read()


def _tls_files(directory: str, who: str = "server") -> dict[str, str]:
    """The PEM files the orchestrator wrote with `fl_core.testing.pki.Pki` (one CA for all)."""
    folder = Path(directory)
    return {
        "certfile": str(folder / f"{who}.pem"),
        "keyfile": str(folder / f"{who}.key"),
        "cafile": str(folder / "ca.pem"),
    }


def _transport(name: str, tls_dir: str, who: str = "server") -> Any:
    options: dict[str, Any] = {}
    if tls_dir:
        options = {"tls": True, **_tls_files(tls_dir, who)}
    if name == "tcp":
        from fl_plugins.transport_tcp.transport import TcpTransport

        return TcpTransport(**options)
    from fl_plugins.transport_grpc.transport import GrpcTransport

    return GrpcTransport(**options)


def _model(size: int) -> Any:
    import numpy as np

    from fl_core.model import FLModel

    array = np.ones(size // 4, dtype=np.float32)  # touched: no page faults while timed
    return FLModel(params={"weights": array})


# --- roles -------------------------------------------------------------------------


def role_raw_recv(size: int, tls_dir: str, fresh: bool) -> None:
    import numpy as np

    # "touched": preallocated and written once, as the baselines in LIMITS.md
    # (the kernel and the copy, no page faults). "fresh": a new buffer per
    # transfer, allocated when the connection arrives, as any receiver of a
    # new model must; its first-touch page faults are part of the time.
    buffer = None if fresh else np.ones(size, dtype=np.uint8)
    server = socket.create_server(("127.0.0.1", 0))
    _say(port=server.getsockname()[1])
    conn, _ = server.accept()
    if buffer is None:
        buffer = np.empty(size, dtype=np.uint8)
    view = memoryview(buffer).cast("B")
    if tls_dir:
        import ssl

        files = _tls_files(tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files["certfile"], files["keyfile"])
        context.load_verify_locations(files["cafile"])
        context.verify_mode = ssl.CERT_REQUIRED
        conn = context.wrap_socket(conn, server_side=True)
    got = 0
    while got < size:
        n = conn.recv_into(view[got : got + CHUNK])
        if not n:
            break
        got += n
    conn.sendall(b"k")
    conn.close()
    _say(received=got, peak=_rss_peak())


def role_raw_send(port: int, size: int, tls_dir: str) -> None:
    import numpy as np

    payload = np.ones(size, dtype=np.uint8)
    view = memoryview(payload).cast("B")
    sock = socket.create_connection(("127.0.0.1", port))
    if tls_dir:
        import ssl

        files = _tls_files(tls_dir, "client")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(files["certfile"], files["keyfile"])
        context.load_verify_locations(files["cafile"])
        context.check_hostname = False
        sock = context.wrap_socket(sock)
    start = time.perf_counter()
    for offset in range(0, size, CHUNK):
        sock.sendall(view[offset : offset + CHUNK])
    assert sock.recv(1) == b"k"
    _say(seconds=time.perf_counter() - start)
    sock.close()


def role_cell_recv(transport: str, tls_dir: str) -> None:
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel

    cell = Cell("server", _transport(transport, tls_dir))
    cell.register_handler(Channel.AUX_COMMUNICATION, "sink", lambda m: None)
    cell.register_handler(Channel.AUX_COMMUNICATION, "echo", lambda m: m.payload)
    _say(url=cell.listen(f"{transport}://127.0.0.1:0"))
    _say(ready_rss=_rss_now())
    _wait_stdin_closed()
    _say(peak=_rss_peak())
    cell.close()
    cell.transport.close()


def role_cell_relay(transport: str, tls_dir: str, parent: str) -> None:
    from fl_core.cell.cell import Cell

    cell = Cell("site-1", _transport(transport, tls_dir))
    cell.connect_parent(parent)
    _say(url=cell.listen(f"{transport}://127.0.0.1:0"))
    _say(ready_rss=_rss_now())
    _wait_stdin_closed()
    _say(peak=_rss_peak())
    cell.close()
    cell.transport.close()


def role_cell_send(
    transport: str, tls_dir: str, parent: str, name: str, size: int, count: int
) -> None:
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel

    cell = Cell(name, _transport(transport, tls_dir, "client"))
    cell.connect_parent(parent)
    model = _model(size)
    ready = _rss_now()
    _say(sending=True)
    seconds = []
    for _ in range(count):  # the first into fresh memory, the rest into reused memory
        start = time.perf_counter()
        cell.request("server", Channel.AUX_COMMUNICATION, "sink", model, timeout=600)
        seconds.append(time.perf_counter() - start)
    _say(seconds=seconds, ready_rss=ready, peak=_rss_peak())
    cell.close()
    cell.transport.close()


def role_cell_rr(transport: str, parent: str, seconds: float) -> None:
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel

    cell = Cell("site-1", _transport(transport, ""))
    cell.connect_parent(parent)
    payload = b"x" * 100
    for _ in range(200):  # warm up
        cell.request("server", Channel.AUX_COMMUNICATION, "echo", payload)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        cell.request("server", Channel.AUX_COMMUNICATION, "echo", payload)
        count += 1
    _say(rate=count / (time.perf_counter() - start))
    cell.close()
    cell.transport.close()


def role_grpc_echo_server() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(4))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _say(port=port)
    _wait_stdin_closed()
    server.stop(0)


def role_grpc_echo_client(port: int, seconds: float) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(ECHO_METHOD)
        payload = b"x" * 100
        for _ in range(200):
            call(payload)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            call(payload)
            count += 1
    _say(rate=count / (time.perf_counter() - start))


def role_grpc_stream_server(size: int) -> None:
    import asyncio

    import grpc
    from grpc import aio

    async def handler(requests: Any, context: Any) -> None:
        got = 0
        while True:
            message = await context.read()
            if message is aio.EOF:
                return
            got += len(message)
            if got >= size:
                await context.write(b"k")
                got = 0

    async def serve() -> None:
        server = aio.server(options=GRPC_OPTIONS)
        method = grpc.stream_stream_rpc_method_handler(handler)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Stream", {"Call": method}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        _say(port=port)
        await asyncio.get_running_loop().run_in_executor(None, _wait_stdin_closed)
        await server.stop(0)

    asyncio.run(serve())


def role_grpc_stream_client(port: int, size: int, count: int) -> None:
    import asyncio

    from grpc import aio

    async def send() -> list[float]:
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
            call = channel.stream_stream(STREAM_METHOD)()
            message = bytes(GRPC_MESSAGE)  # one message, sent again and again: no copies
            seconds = []
            for _ in range(count):
                start = time.perf_counter()
                for _ in range(size // GRPC_MESSAGE):
                    await call.write(message)
                assert await call.read() == b"k"
                seconds.append(time.perf_counter() - start)
            await call.done_writing()
            return seconds

    _say(seconds=asyncio.run(send()))


ROLES: dict[str, Callable[..., None]] = {
    "raw-recv": lambda a: role_raw_recv(int(a[0]), a[1], a[2] == "fresh"),
    "raw-send": lambda a: role_raw_send(int(a[0]), int(a[1]), a[2]),
    "cell-recv": lambda a: role_cell_recv(a[0], a[1]),
    "cell-relay": lambda a: role_cell_relay(a[0], a[1], a[2]),
    "cell-send": lambda a: role_cell_send(a[0], a[1], a[2], a[3], int(a[4]), int(a[5])),
    "cell-rr": lambda a: role_cell_rr(a[0], a[1], float(a[2])),
    "grpc-echo-server": lambda a: role_grpc_echo_server(),
    "grpc-echo-client": lambda a: role_grpc_echo_client(int(a[0]), float(a[1])),
    "grpc-stream-server": lambda a: role_grpc_stream_server(int(a[0])),
    "grpc-stream-client": lambda a: role_grpc_stream_client(int(a[0]), int(a[1]), int(a[2])),
}


# --- the orchestrator --------------------------------------------------------------


class Proc:
    """A role process; its JSON lines are read one at a time."""

    def __init__(self, role: str, *args: object) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, __file__, "--role", role, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.popen.args[3]} ended early (exit {self.popen.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def finish(self) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        result = self.read()
        self.popen.wait(timeout=60)
        return result


def run_raw(size: int, tls_dir: str, fresh: bool = False) -> float:
    receiver = Proc("raw-recv", size, tls_dir, "fresh" if fresh else "touched")
    port = receiver.read()["port"]
    sender = Proc("raw-send", port, size, tls_dir)
    seconds = float(sender.read()["seconds"])
    receiver.read()
    sender.popen.wait(timeout=60)
    receiver.popen.wait(timeout=60)
    return seconds


def run_cell(transport: str, size: int, tls_dir: str, relay: bool, count: int) -> dict[str, Any]:
    """`count` models from one sender process to one receiver process, one after another."""
    receiver = Proc("cell-recv", transport, tls_dir)
    url = receiver.read()["url"]
    receiver_ready = receiver.read()["ready_rss"]
    procs = [receiver]
    name, relay_ready = "site-1", 0
    if relay:
        relay_proc = Proc("cell-relay", transport, tls_dir, url)
        url = relay_proc.read()["url"]
        relay_ready = relay_proc.read()["ready_rss"]
        procs.append(relay_proc)
        name = "site-1.j"
    sender = Proc("cell-send", transport, tls_dir, url, name, size, count)
    sender.read()  # the model is built; the timed part starts
    sent = sender.read()
    sender.popen.wait(timeout=60)
    result: dict[str, Any] = {
        "seconds": [float(s) for s in sent["seconds"]],
        "sender_growth": sent["peak"] - sent["ready_rss"],
    }
    if relay:  # children first, so no cell sees its parent go and reconnects
        result["relay_growth"] = procs[1].finish()["peak"] - relay_ready
    result["receiver_growth"] = receiver.finish()["peak"] - receiver_ready
    return result


def run_grpc_stream(size: int, count: int) -> list[float]:
    server = Proc("grpc-stream-server", size)
    port = server.read()["port"]
    client = Proc("grpc-stream-client", port, size, count)
    seconds = [float(s) for s in client.read()["seconds"]]
    client.popen.wait(timeout=60)
    assert server.popen.stdin is not None
    server.popen.stdin.close()
    server.popen.wait(timeout=60)
    return seconds


def run_rr(transport: str, seconds: float) -> float:
    receiver = Proc("cell-recv", transport, "")
    url = receiver.read()["url"]
    receiver.read()
    client = Proc("cell-rr", transport, url, seconds)
    rate = float(client.read()["rate"])
    client.popen.wait(timeout=60)
    receiver.finish()
    return rate


def run_grpc_echo(seconds: float) -> float:
    server = Proc("grpc-echo-server")
    port = server.read()["port"]
    client = Proc("grpc-echo-client", port, seconds)
    rate = float(client.read()["rate"])
    client.popen.wait(timeout=60)
    assert server.popen.stdin is not None
    server.popen.stdin.close()
    server.popen.wait(timeout=60)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="also run the TLS cases")
    parser.add_argument("--rr-seconds", type=float, default=3.0)
    parser.add_argument("--transports", default="tcp,grpc")
    args, rest = parser.parse_known_args()
    if args.role:
        ROLES[args.role](rest)
        return
    size = args.size_mib * MiB
    transports = []
    for name in args.transports.split(","):
        try:
            _transport(name, "").close()
            transports.append(name)
        except ImportError as exc:
            print(f"skipping {name}: {exc}")
    gib = size / 1024**3
    print(
        f"payload {args.size_mib} MiB; median of {args.repeat}; "
        "ratios are to the same run's baseline"
    )
    tls_modes = [""] + (["tls"] if args.tls else [])
    with tempfile.TemporaryDirectory() as tmp:
        if args.tls:
            from fl_core.testing.pki import Pki

            Pki(Path(tmp))  # written once; every role loads the same files
        for mode in tls_modes:
            tls_dir = tmp if mode else ""
            raw = statistics.median(run_raw(size, tls_dir) for _ in range(args.repeat))
            fresh = statistics.median(run_raw(size, tls_dir, True) for _ in range(args.repeat))
            label = "TLS socket" if mode else "plain socket"
            print(
                f"\n{label} sendall -> recv_into: {gib / raw:.2f} GiB/s into a touched buffer "
                f"(the baseline), {gib / fresh:.2f} GiB/s into a fresh one = {raw / fresh:.2f}x"
            )
            if not mode and "grpc" in transports:
                grpc_raw = statistics.median(run_grpc_stream(size, args.repeat + 1)[1:])
                print(
                    f"raw grpc bidi stream ({GRPC_MESSAGE // MiB} MiB bytes messages, no "
                    f"copies): {gib / grpc_raw:.2f} GiB/s = {raw / grpc_raw:.2f}x raw socket"
                )
            for name in transports:
                for relay in (False, True):
                    # One pair of processes: the first model lands in fresh memory
                    # (compared with the fresh-buffer socket), the later ones in the
                    # memory the previous model left (compared with the touched one).
                    run = run_cell(name, size, tls_dir, relay, args.repeat + 1)
                    cold, warm = run["seconds"][0], statistics.median(run["seconds"][1:])
                    line = (
                        f"  {name}{' +TLS' if mode else ''}{' via relay' if relay else ''}: "
                        f"first {gib / cold:.2f} GiB/s = {fresh / cold:.2f}x raw fresh; "
                        f"later {gib / warm:.2f} GiB/s = {raw / warm:.2f}x raw; growth MiB: "
                        f"sender {run['sender_growth'] / MiB:.0f}, "
                        f"receiver {run['receiver_growth'] / MiB:.0f}"
                    )
                    if relay:
                        line += f", relay {run['relay_growth'] / MiB:.0f}"
                    if name == "grpc" and not mode:
                        line += f"; {grpc_raw / warm:.2f}x raw grpc"
                    line += "  [s: " + " ".join(f"{t:.2f}" for t in run["seconds"]) + "]"
                    print(line, flush=True)
    echo = statistics.median(run_grpc_echo(args.rr_seconds) for _ in range(args.repeat))
    print(f"\nraw grpc unary echo (100 B, one thread): {echo:.0f} calls/s")
    for name in transports:
        rate = statistics.median(run_rr(name, args.rr_seconds) for _ in range(args.repeat))
        print(f"  {name} cell request/reply: {rate:.0f} /s = {rate / echo:.2f}x grpc echo")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
