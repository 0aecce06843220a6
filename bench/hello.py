"""What proving a secret at hello costs: cell joins per second, with and without a proof.

A listening cell runs in a process of its own; this process joins it again
and again (connect, hello, [challenge, proof,] hello_ok, close) over tcp.
Baseline, measured in the same run: a raw TCP connect plus one 100-byte
round trip to a plain socket server in another process, which is what any
join costs before a cell says a word.

    .venv/bin/python bench/hello.py            # 300 joins each, median of 3
    .venv/bin/python bench/hello.py --quick    # 100 joins, once
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

LISTENER = """
import sys, threading
from fl_core.cell.cell import Cell
from fl_plugins.transport_tcp.transport import TcpTransport
t = TcpTransport()
c = Cell("server", t)
if sys.argv[1] == "proof":
    c.require_proof(lambda name: b"k" * 32)
print(c.listen("tcp://127.0.0.1:0"), flush=True)
sys.stdin.read()
"""

ECHO = """
import socket, threading
s = socket.create_server(("127.0.0.1", 0))
print(f"tcp://127.0.0.1:{s.getsockname()[1]}", flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _server(code: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def raw(url: str, count: int) -> float:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    started = time.perf_counter()
    for _ in range(count):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"x" * 100)
            got = 0
            while got < 100:
                got += len(sock.recv(4096))
    return count / (time.perf_counter() - started)


def joins(url: str, count: int, key: bytes | None) -> float:
    from fl_core.cell.cell import Cell
    from fl_plugins.transport_tcp.transport import TcpTransport

    transport = TcpTransport()
    try:
        started = time.perf_counter()
        for i in range(count):
            cell = Cell(f"site-{i}", transport)
            cell.connect_parent(url, timeout=10, reconnect=False, key=key)
            cell.close()
        return count / (time.perf_counter() - started)
    finally:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 joins, one pass")
    opts = parser.parse_args()
    count, passes = (100, 1) if opts.quick else (300, 3)
    echo, echo_url = _server(ECHO)
    open_cell, open_url = _server(LISTENER, "open")
    proof_cell, proof_url = _server(LISTENER, "proof")
    try:
        figures: dict[str, list[float]] = {"raw": [], "open": [], "proof": []}
        for _ in range(passes):
            figures["raw"].append(raw(echo_url, count))
            figures["open"].append(joins(open_url, count, None))
            figures["proof"].append(joins(proof_url, count, b"k" * 32))
    finally:
        for proc in (echo, open_cell, proof_cell):
            proc.kill()
            proc.wait()
    base = statistics.median(figures["raw"])
    print(f"{count} joins per case, median of {passes}")
    print(f"  raw tcp connect + 100 B round trip: {base:8.0f}/s   1.00x (baseline)")
    for name, what in (("open", "cell join, no proof"), ("proof", "cell join with proof")):
        rate = statistics.median(figures[name])
        print(f"  {what:34s}: {rate:8.0f}/s   {rate / base:.2f}x of baseline")
    ratio = statistics.median(figures["proof"]) / statistics.median(figures["open"])
    print(f"  a join with proof runs at {ratio:.2f}x the rate of one without")


if __name__ == "__main__":
    main()
