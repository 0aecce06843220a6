"""A POC's server parent under a connection flood from a peer with no credentials.

2,000 idle sockets, 300 slowloris sockets (a few bytes of a hello prefix every
second) and a few links announcing 16 MiB first frames hit the server
parent's URL while a hello-numpy job runs. The job still finishes exact, and
the server parent's memory (RSS, read from /proc) grows by less than 64 MiB.
Loops are bounded in count and time; only 127.0.0.1 is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from fl_core.config.federation import load_federation
from fl_core.errors import CellError
from fl_core.model import load_params
from fl_core.serialization.envelope import BodyKind, encode_frame_head
from fl_core.spec.transport import Frame, Transport
from fl_plugins.transport_grpc.transport import GrpcTransport
from fl_plugins.transport_tcp.transport import TcpTransport

pytestmark = pytest.mark.e2e

IDLE = 2000
SLOW = 300
BIG = 4
FLOOD_SECONDS = 45.0
RSS_BUDGET = 64 * 2**20
GRPC_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"
FL_CORE = [sys.executable, "-m", "fl_core.cli"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FL_CORE, *args], capture_output=True, text=True, timeout=timeout)


def hello_job(folder: Path, rounds: int) -> Path:
    folder.mkdir(parents=True)
    for name in ("train.py", "initial_model.npz"):
        (folder / name).write_bytes((HELLO / name).read_bytes())
    text = (HELLO / "job.yaml").read_text().replace("rounds: 5", f"rounds: {rounds}")
    (folder / "job.yaml").write_text(text)
    return folder


def assert_exact(out: Path, rounds: int, clients: int) -> None:
    """hello-numpy's model after `rounds` FedAvg rounds over `clients` sites, to the bit."""
    final = load_params(out / "final_model.npz")
    initial = load_params(HELLO / "initial_model.npz")
    expected = rounds * (clients + 1) / 2  # site k adds k; equal weights
    assert set(final) == set(initial)
    for name, array in final.items():
        assert np.array_equal(array, initial[name] + expected), name
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def wait_final(ws: Path, job_id: str, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        proc = run_cli("job", "status", job_id, "--workspace", str(ws))
        assert proc.returncode == 0, proc.stderr
        record: dict[str, object] = json.loads(proc.stdout)
        if record["state"] in ("finished", "failed", "aborted") or time.monotonic() > deadline:
            return record
        time.sleep(0.3)  # polling a condition, with a deadline


def processes_under(root: Path) -> list[int]:
    """Live processes whose command line names a path under `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(root) in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(root: Path, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_under(root)) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a condition, with a deadline
    return left


def rss(pid: int) -> int:
    """Resident memory of `pid` in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Flood:
    """Opens and feeds the hostile sockets on one thread until `stop` (bounded in time)."""

    def __init__(self, url: str, pid: int, transport_name: str) -> None:
        parsed = urlparse(url)
        assert parsed.hostname == "127.0.0.1" and parsed.port, url
        self.address = (parsed.hostname, parsed.port)
        self.url = url
        self.pid = pid
        self.transport_name = transport_name
        self.peak = rss(pid)
        self.opened = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        hello_prefix = encode_frame_head({"fl-control": "hello"}, BodyKind.BYTES, 10)
        self._trickle = GRPC_PREFACE if transport_name == "grpc" else hello_prefix

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join(FLOOD_SECONDS + 30)
        assert not self._thread.is_alive()

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.address, timeout=2.0)
        except OSError:
            return None  # the listener's backlog is full: that is the server coping
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _sample(self) -> None:
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss(self.pid))

    def _run(self) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        held: list[socket.socket] = []
        slow: list[socket.socket] = []
        try:
            self._big_first_frames(held)
            for n in range(IDLE + SLOW):
                if time.monotonic() > deadline:  # all of them, even if the job is done
                    break
                sock = self._open()
                if sock is not None:
                    (slow if n % 7 == 0 and len(slow) < SLOW else held).append(sock)
                if n % 50 == 0:
                    self._sample()
            step = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                for sock in slow:  # a byte of a hello prefix, about every second
                    at = step % len(self._trickle)
                    with contextlib.suppress(OSError):
                        sock.send(self._trickle[at : at + 1])
                step += 1
                self._sample()
                self.stop.wait(1.0)
        finally:
            self._sample()
            for sock in held + slow:
                sock.close()

    def _big_first_frames(self, held: list[socket.socket]) -> None:
        """A few links whose first frame announces a 16 MiB body."""
        if self.transport_name == "tcp":
            head = encode_frame_head({"fl-control": "hello"}, BodyKind.BYTES, 16 * 2**20)
            for _ in range(BIG):
                sock = self._open()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.send(head + b"x")
                    held.append(sock)
        client: Transport = TcpTransport() if self.transport_name == "tcp" else GrpcTransport()
        try:
            for _ in range(BIG):
                try:
                    conn = client.connect(self.url, 5.0)
                    conn.start(lambda frame: None, lambda exc: None)
                    conn.send(Frame({"fl-control": "hello"}, bytes(16 * 2**20)))
                except CellError:
                    pass  # refused, as it should be
                self._sample()
        finally:
            client.close()


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_a_flood_of_unadmitted_sockets_costs_little_and_the_job_stays_exact(
    tmp_path: Path, transport: str
) -> None:
    ws = tmp_path / "poc"
    job = hello_job(tmp_path / "job", rounds=3)
    prepared = run_cli(
        "poc", "prepare", "--workspace", str(ws), "--clients", "2", "--transport", transport
    )
    assert prepared.returncode == 0, prepared.stderr
    started = run_cli("poc", "start", "--workspace", str(ws))
    flood: Flood | None = None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        config = load_federation(ws)
        pid = int((config.server_dir / "pid").read_text())
        url = config.url_file.read_text().strip()
        before = rss(pid)
        flood = Flood(url, pid, transport)
        flood.start()
        submitted = run_cli("job", "submit", str(job), "--workspace", str(ws))
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        record = wait_final(ws, job_id)
        assert record["state"] == "finished", record
        flood.join()
        out = tmp_path / "out"
        got = run_cli("job", "download", job_id, "--output", str(out), "--workspace", str(ws))
        assert got.returncode == 0, got.stderr
        assert_exact(out, rounds=3, clients=2)
        assert flood.opened >= IDLE // 2, f"only {flood.opened} sockets were opened"
        grown = flood.peak - before
        assert grown < RSS_BUDGET, (
            f"the server parent grew by {grown / 2**20:.1f} MiB under {flood.opened} sockets"
        )
    finally:
        if flood is not None:
            flood.stop.set()
        run_cli("poc", "stop", "--workspace", str(ws))
    assert wait_gone(ws) == []
