"""Production's transport costs: mutual TLS with names checked, against raw TLS sockets.

Every case runs its two ends as separate processes on loopback (or, for the
handshakes, a listener process and this one), with certificates from
`fl_core.testing.pki.Pki` (EC P-256), and is compared with a baseline
measured in the same run with the same keys:

- `--part handshake`: cell joins per second over grpc with mutual TLS: a new
  channel (TCP, TLS handshake with the client certificate, the client's check
  that the server certificate names 127.0.0.1), the cell's hello, and the
  listener's check that the certificate's common name is the cell name the
  peer claims (`Links.check_peers`, the pki provider's rule in small), then
  close. Each join presents one of `--identities` site certificates in turn,
  as `site-K`. Baseline: a Python `ssl` socket doing the same mutual
  handshake with the same certificates (and the same host-name check), plus
  one 100-byte round trip to a TLS echo server in another process, which is
  what any TLS join costs before a cell says a word. Target: >= 0.8x.
- `--part throughput`: a model round of `--size-mib` (one float32 array)
  over grpc with mutual TLS, between a server cell and a site cell in two
  processes: the site fetches the model (the server's reply carries it) and
  sends it back (its request carries it), `--repeat` + 1 rounds on one link.
  Baseline: the same bytes down and up one mutual-TLS Python socket
  (`sendall` -> `recv_into` a touched, preallocated buffer, the ceiling),
  run before and after the cells; the faster of the two counts.
  The first round lands in fresh memory and is shown apart; the ratio is of
  the median of the later ones. Target: >= 0.5x. Also shown: the CPU
  seconds per GiB of each end (robust to other load, unlike the times), and
  a raw grpcio mTLS upload of the same bytes (`production_grpc.py`) in
  64 KiB messages, the most a grpc listener takes from a dialer (the
  admission rule), and in 2 MiB ones: the ceiling of a site's upload.

    .venv/bin/python bench/production.py --part handshake          # 300 joins, median of 3
    .venv/bin/python bench/production.py --part throughput --size-mib 1024
    .venv/bin/python bench/production.py --part job                # as root: namespaces

`--part job` (bench/production_job.py): hello-numpy N=2 R=5 in production
(namespaces, kits, grpc + mTLS) against the same job in POC, submit to
finished. Target: <= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import production_grpc  # bench/production_grpc.py: raw grpc baselines (this folder is on sys.path)
import production_job  # bench/production_job.py: --part job

MiB = 1024 * 1024
CHUNK = 4 * MiB
ROUND_TRIP = 100


# --- certificates ------------------------------------------------------------------


def _files(folder: str, who: str) -> tuple[str, str, str]:
    """(certfile, keyfile, cafile) that `Pki` wrote for `who`."""
    path = Path(folder)
    return str(path / f"{who}.pem"), str(path / f"{who}.key"), str(path / "ca.pem")


def _credentials(folder: str, who: str) -> Any:
    from fl_core.spec.security import Credentials

    cert, key, ca = (Path(p).read_bytes() for p in _files(folder, who))
    return Credentials(cert, key, ca)


def _ssl_context(folder: str, who: str, *, server: bool) -> ssl.SSLContext:
    """A mutual-TLS context with `who`'s certificate; a client checks the host name."""
    cert, key, ca = _files(folder, who)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED  # a client also checks the host name (default)
    return context


def _common_name_check(certificate: bytes | None, name: str) -> Any:
    """`Links.check_peers`: the certificate's common name must be the cell name claimed."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from fl_core.spec.security import AdmissionRefused, Identity

    if certificate is None:
        raise AdmissionRefused(f"{name} presented no certificate")
    cert = x509.load_der_x509_certificate(certificate)
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common or common[0].value != name:
        raise AdmissionRefused(f"a certificate for {common[0].value!r} cannot claim {name!r}")
    return Identity(name, serial=cert.serial_number)


def _transport(name: str, folder: str, who: str) -> Any:
    if name == "tcp":
        from fl_plugins.transport_tcp.transport import TcpTransport

        return TcpTransport(credentials=_credentials(folder, who))
    from fl_plugins.transport_grpc.transport import GrpcTransport

    return GrpcTransport(credentials=_credentials(folder, who))


# --- role processes ------------------------------------------------------------------


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def role_tls_echo(folder: str) -> None:
    """A mutual-TLS echo server; a thread per connection."""
    context = _ssl_context(folder, "server", server=True)
    listener = socket.create_server(("127.0.0.1", 0))
    _say(port=listener.getsockname()[1])

    def serve(raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                while data := tls.recv(4096):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw,), daemon=True).start()


def _model(size: int) -> Any:
    import numpy as np

    from fl_core.model import FLModel

    array = np.ones(size // 4, dtype=np.float32)  # touched: no page faults while timed
    return FLModel(params={"weights": array})


def role_cell_server(folder: str, size: int, transport: str) -> None:
    """The server cell over `transport` + mTLS, checking names; `fetch` replies with the model."""
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel

    cell = Cell("server", _transport(transport, folder, "server"))
    cell.links.check_peers(_common_name_check)
    model = _model(size) if size else None
    cell.register_handler(Channel.AUX_COMMUNICATION, "fetch", lambda m: model)
    cell.register_handler(Channel.AUX_COMMUNICATION, "sink", lambda m: None)
    _say(url=cell.listen(f"{transport}://127.0.0.1:0"))
    cpu = time.process_time()
    sys.stdin.read()
    _say(cpu=time.process_time() - cpu)  # this process's CPU seconds while serving
    cell.close()
    cell.transport.close()


def role_cell_site(folder: str, url: str, count: int) -> None:
    """Fetch the model and send it back, `count` times; the seconds of each way."""
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel
    from fl_plugins.transport_grpc.transport import GrpcTransport

    cell = Cell("site-0", GrpcTransport(credentials=_credentials(folder, "site-0")))
    cell.connect_parent(url)
    down, up, cpu_down, cpu_up = [], [], [], []
    for _ in range(count):
        start, cpu_start = time.perf_counter(), time.process_time()
        model = cell.request("server", Channel.AUX_COMMUNICATION, "fetch", timeout=600).payload
        middle, cpu_middle = time.perf_counter(), time.process_time()
        cell.request("server", Channel.AUX_COMMUNICATION, "sink", model, timeout=600)
        up.append(time.perf_counter() - middle)
        down.append(middle - start)
        cpu_up.append(time.process_time() - cpu_middle)
        cpu_down.append(cpu_middle - cpu_start)
        del model
    _say(down=down, up=up, cpu_down=cpu_down, cpu_up=cpu_up)
    cell.close()
    cell.transport.close()


def _receive(conn: ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got : got + CHUNK])
        if not n:
            raise ConnectionError(f"the peer closed after {got} of {len(view)} bytes")
        got += n


def _send(conn: ssl.SSLSocket, view: memoryview) -> None:
    for offset in range(0, len(view), CHUNK):
        conn.sendall(view[offset : offset + CHUNK])


def role_raw_server(folder: str, size: int, count: int) -> None:
    """Sends `size` bytes down a mutual-TLS socket and takes them back, `count` times."""
    import numpy as np

    payload = memoryview(np.ones(size, dtype=np.uint8)).cast("B")
    inbox = memoryview(np.ones(size, dtype=np.uint8)).cast("B")
    listener = socket.create_server(("127.0.0.1", 0))
    _say(port=listener.getsockname()[1])
    raw, _ = listener.accept()
    with _ssl_context(folder, "server", server=True).wrap_socket(raw, server_side=True) as tls:
        for _ in range(count):
            _send(tls, payload)
            _receive(tls, inbox)
            tls.sendall(b"k")


def role_raw_site(folder: str, port: int, size: int, count: int) -> None:
    import numpy as np

    inbox = memoryview(np.ones(size, dtype=np.uint8)).cast("B")
    context = _ssl_context(folder, "site-0", server=False)
    down, up = [], []
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            for _ in range(count):
                start = time.perf_counter()
                _receive(tls, inbox)
                middle = time.perf_counter()
                _send(tls, inbox)
                assert tls.recv(1) == b"k"
                up.append(time.perf_counter() - middle)
                down.append(middle - start)
    _say(down=down, up=up)


ROLES: dict[str, Callable[[list[str]], None]] = {
    "tls-echo": lambda a: role_tls_echo(a[0]),
    "cell-server": lambda a: role_cell_server(a[0], int(a[1]), a[2]),
    "cell-site": lambda a: role_cell_site(a[0], a[1], int(a[2])),
    "raw-server": lambda a: role_raw_server(a[0], int(a[1]), int(a[2])),
    "raw-site": lambda a: role_raw_site(a[0], int(a[1]), int(a[2]), int(a[3])),
    "job-admin": lambda a: production_job.role_job_admin(a[0], a[1], int(a[2])),
    "grpc-sink": lambda a: production_grpc.role_grpc_sink(a[0]),
    "grpc-push": lambda a: production_grpc.role_grpc_push(a[0], *map(int, a[1:5])),
}


class Proc:
    """A role process; its JSON lines are read one at a time."""

    def __init__(self, role: str, *args: object) -> None:
        self.role = role
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
            raise RuntimeError(f"{self.role} ended early (exit {self.popen.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


# --- handshakes ------------------------------------------------------------------------


def raw_handshakes(folder: str, port: int, count: int, identities: int) -> float:
    """Mutual-TLS connects + one round trip per second, cycling over the site certificates."""
    contexts = [_ssl_context(folder, f"site-{k}", server=False) for k in range(identities)]
    message = b"x" * ROUND_TRIP
    started = time.perf_counter()
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            # As every transport does: else Nagle holds the data behind the handshake.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = contexts[i % identities]
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(message)
                got = 0
                while got < ROUND_TRIP:
                    got += len(tls.recv(4096))
    return count / (time.perf_counter() - started)


def cell_joins(name: str, folder: str, url: str, count: int, identities: int) -> float:
    """Cell joins per second over transport `name` + mTLS, each checked by name.

    One transport per identity, and one `CellResources` (dispatcher and timer
    threads) for every cell, as in a process that reconnects: the cost of a
    connection, not of starting a cell's threads.
    """
    from fl_core.cell.cell import Cell, CellResources

    transports = [_transport(name, folder, f"site-{k}") for k in range(identities)]
    resources = CellResources()
    try:
        started = time.perf_counter()
        for i in range(count):
            k = i % identities
            cell = Cell(f"site-{k}", transports[k], resources)
            cell.connect_parent(url, timeout=10, reconnect=False)
            cell.close()
        return count / (time.perf_counter() - started)
    finally:
        resources.close()
        for transport in transports:
            transport.close()


def transport_connects(folder: str, url: str, count: int, identities: int) -> float:
    """grpc + mTLS `Transport.connect` alone per second: a link a listener took, no hello."""
    transports = [_transport("grpc", folder, f"site-{k}") for k in range(identities)]
    try:
        started = time.perf_counter()
        for i in range(count):
            conn = transports[i % identities].connect(url, 10)
            conn.start(lambda frame: None, lambda exc: None)
            conn.close()
        return count / (time.perf_counter() - started)
    finally:
        for transport in transports:
            transport.close()


def part_handshake(folder: str, count: int, passes: int, identities: int) -> None:
    echo = Proc("tls-echo", folder)
    servers = {name: Proc("cell-server", folder, 0, name) for name in ("grpc", "tcp")}
    cases: dict[str, Callable[[], float]] = {}
    try:
        port = echo.read()["port"]
        urls = {name: proc.read()["url"] for name, proc in servers.items()}
        cases = {
            "raw": lambda: raw_handshakes(folder, port, count, identities),
            "grpc": lambda: cell_joins("grpc", folder, urls["grpc"], count, identities),
            "connect": lambda: transport_connects(folder, urls["grpc"], count, identities),
            "tcp": lambda: cell_joins("tcp", folder, urls["tcp"], count, identities),
        }
        figures: dict[str, list[float]] = {case: [] for case in cases}
        for run in cases.values():  # warm up: imports, first handshakes, server caches
            run()
        for _ in range(passes):
            for case, run in cases.items():
                figures[case].append(run())
    finally:
        echo.popen.kill()
        echo.popen.wait()
        for proc in servers.values():
            proc.stop()
    base = statistics.median(figures["raw"])
    print(f"{count} connections per case, median of {passes}, {identities} site certificates")
    lines = (
        ("raw", "raw mTLS handshake + 100 B round trip (ssl)"),
        ("grpc", "grpc + mTLS cell join, names checked"),
        ("connect", "  of which grpc Transport.connect alone"),
        ("tcp", "tcp + mTLS cell join, names checked (reference)"),
    )
    for case, what in lines:
        rate = statistics.median(figures[case])
        runs = " ".join(f"{r:.0f}" for r in figures[case])
        print(f"  {what:48s} {rate:7.0f}/s  {rate / base:.2f}x  [{runs}]")
    ratio = statistics.median(figures["grpc"]) / base
    print(f"  grpc join vs raw handshake: {ratio:.2f}x; target >= 0.80x: ", end="")
    print("met" if ratio >= 0.8 else f"MISSED by {0.8 - ratio:.2f}")


# --- throughput ------------------------------------------------------------------------


def run_raw(folder: str, size: int, count: int) -> dict[str, list[float]]:
    server = Proc("raw-server", folder, size, count)
    port = server.read()["port"]
    site = Proc("raw-site", folder, port, size, count)
    result = site.read()
    site.popen.wait(timeout=60)
    server.popen.wait(timeout=60)
    return result


def run_cell(folder: str, size: int, count: int) -> dict[str, Any]:
    """The site's seconds (and CPU seconds) per way and round; the server's CPU seconds."""
    server = Proc("cell-server", folder, size, "grpc")
    try:
        url = server.read()["url"]
        site = Proc("cell-site", folder, url, count)
        result: dict[str, Any] = site.read()
        site.popen.wait(timeout=60)
        assert server.popen.stdin is not None
        server.popen.stdin.close()
        result["server_cpu"] = server.read()["cpu"]
    finally:
        server.stop()
    return result


def run_grpc(folder: str, size: int, message: int, count: int) -> list[float]:
    """Seconds per upload of `size` bytes by raw grpc in `message`-byte messages."""
    sink = Proc("grpc-sink", folder)
    try:
        port = sink.read()["port"]
        push = Proc("grpc-push", folder, port, size, message, count)
        seconds: list[float] = push.read()["up"]
        push.popen.wait(timeout=60)
    finally:
        sink.popen.kill()
        sink.popen.wait()
    return seconds


def _round_seconds(run: dict[str, list[float]]) -> float:
    """The median seconds of a round (down + up), the first round left out."""
    rounds = zip(run["down"][1:], run["up"][1:], strict=True)
    return statistics.median(down + up for down, up in rounds)


def part_throughput(folder: str, size: int, repeat: int) -> None:
    gib = size / 1024**3
    before = run_raw(folder, size, repeat + 1)
    cell = run_cell(folder, size, repeat + 1)
    after = run_raw(folder, size, repeat + 1)
    # The faster of the baselines before and after: on a shared machine the
    # load drifts, and a slow baseline would flatter the ratio.
    raw = min(before, after, key=_round_seconds)
    print(f"model {size // MiB} MiB down and up one link; {repeat + 1} rounds, median of the later")
    ratios = []
    for way in ("down", "up"):
        raw_s = statistics.median(raw[way][1:])
        cell_s = statistics.median(cell[way][1:])
        ratios.append(raw_s / cell_s)
        print(
            f"  {way:4s} raw mTLS socket {gib / raw_s:5.2f} GiB/s (baseline); grpc + mTLS cell "
            f"{gib / cell_s:5.2f} GiB/s = {raw_s / cell_s:.2f}x; first round "
            f"{gib / cell[way][0]:.2f} GiB/s"
            f"  [s raw: {' '.join(f'{t:.2f}' for t in raw[way])};"
            f" cell: {' '.join(f'{t:.2f}' for t in cell[way])}]"
        )
    # CPU seconds per GiB moved: robust to other load, unlike the times (both ends of
    # the cell run share 2 cores; the server's figure covers both ways and all rounds).
    print(
        f"  CPU s per GiB: site receiving {statistics.median(cell['cpu_down'][1:]) / gib:.2f}, "
        f"site sending {statistics.median(cell['cpu_up'][1:]) / gib:.2f}; server, both ways "
        f"{cell['server_cpu'] / (2 * gib * (repeat + 1)):.2f} (all rounds)"
    )
    from fl_plugins.transport_grpc.fragments import FRAGMENT

    raw_up = statistics.median(raw["up"][1:])
    for message, why in ((FRAGMENT, "the most a listener takes"), (2 * MiB, "a stream chunk")):
        pushed = run_grpc(folder, size, message, repeat + 1)
        grpc_s = statistics.median(pushed[1:])
        print(
            f"  up   raw grpc + mTLS client stream, {message // 1024} KiB messages ({why}): "
            f"{gib / grpc_s:5.2f} GiB/s = {raw_up / grpc_s:.2f}x of the raw socket"
            f"  [s: {' '.join(f'{t:.2f}' for t in pushed)}]"
        )
    raw_round, cell_round = _round_seconds(raw), _round_seconds(cell)
    ratio = raw_round / cell_round
    print(
        f"  round (down + up): raw {raw_round:.2f} s, cell {cell_round:.2f} s = {ratio:.2f}x; "
        f"target >= 0.50x: {'met' if ratio >= 0.5 else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=("handshake", "throughput", "job"), action="append")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--joins", type=int, default=300, help="connections per handshake case")
    parser.add_argument("--identities", type=int, default=8, help="site certificates to cycle")
    args, rest = parser.parse_known_args()
    if args.role:
        ROLES[args.role](rest)
        return
    parts = args.part or ["handshake", "throughput", "job"]
    if "job" in parts:
        production_job.part_job(args.repeat)
        if parts == ["job"]:
            return
    with tempfile.TemporaryDirectory() as folder:
        from fl_core.testing.pki import Pki

        pki = Pki(Path(folder))  # server.pem names localhost and 127.0.0.1
        for k in range(args.identities):
            pki.issue(f"site-{k}")
        if "handshake" in parts:
            part_handshake(folder, args.joins, args.repeat, args.identities)
        if "throughput" in parts:
            part_throughput(folder, args.size_mib * MiB, args.repeat)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
