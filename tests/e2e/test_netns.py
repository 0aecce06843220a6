"""The real-hosts harness itself (tests/e2e/netns.py): names, reachability, isolation, clean-up."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import HostsFactory
from tests.e2e.netns import ETC_NETNS, Hosts, ip_command

pytestmark = pytest.mark.e2e

WAIT = 30.0
SERVER, SITE, ADMIN = "server.example.org", "site-1", "admin"
NAMES = {SERVER: "server", SITE: "site-1", ADMIN: "admin"}

ECHO_SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
c, peer = s.accept()
data = b""
while chunk := c.recv(64):
    data += chunk
c.sendall(data + b" seen from " + peer[0].encode())
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
except OSError as error:
    print(type(error).__name__)
    raise SystemExit(0)
c.sendall(b"ping")
c.shutdown(socket.SHUT_WR)
data = b""
while chunk := c.recv(64):
    data += chunk
print(data.decode())
"""


def root_links() -> list[str]:
    """The names of the root namespace's links (the harness must not add any)."""
    out = subprocess.run([str(ip_command()), "-o", "link"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def netns_list() -> str:
    return subprocess.run(
        [str(ip_command()), "netns", "list"], capture_output=True, text=True, check=True
    ).stdout


def test_hosts_reach_each_other_by_name_over_tcp(netns_hosts: HostsFactory) -> None:
    hosts = netns_hosts(NAMES)
    server = hosts.popen(SITE, [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE)
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    client = hosts.run(SERVER, [sys.executable, "-c", CLIENT, SITE, port], timeout=WAIT)
    # The peer address proves the bytes crossed the bridge, not a loopback.
    assert client.stdout.strip() == f"ping seen from {hosts.address(SERVER)}", client.stderr
    assert server.wait(WAIT) == 0
    server.stdout.close()
    assert hosts.close() == []


def test_a_host_cannot_reach_the_root_namespace_loopback(netns_hosts: HostsFactory) -> None:
    hosts = netns_hosts([SITE])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = str(listener.getsockname()[1])
        client = hosts.run(SITE, [sys.executable, "-c", CLIENT, "127.0.0.1", port], timeout=WAIT)
        assert client.stdout.strip() == "ConnectionRefusedError", client.stderr
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_host_names_resolve_through_etc_netns_hosts(netns_hosts: HostsFactory) -> None:
    root_hosts = Path("/etc/hosts").read_text()
    hosts = netns_hosts(NAMES)
    probe = (
        "import json, socket, sys; "
        "print(json.dumps({n: socket.gethostbyname(n) for n in sys.argv[1:]}))"
    )
    for host in hosts.names:
        done = hosts.run(host, [sys.executable, "-c", probe, *NAMES, "localhost"], timeout=WAIT)
        assert done.returncode == 0, done.stderr
        expected = {name: hosts.address(name) for name in NAMES} | {"localhost": "127.0.0.1"}
        assert json.loads(done.stdout) == expected
    # The file is bind-mounted per `ip netns exec`: the root namespace's is untouched.
    assert Path("/etc/hosts").read_text() == root_hosts


def test_the_venv_python_runs_inside_a_host(netns_hosts: HostsFactory) -> None:
    hosts = netns_hosts([SITE])
    probe = "import sys, fl_core; print(sys.prefix); print(fl_core.__file__)"
    done = hosts.run(SITE, [sys.executable, "-c", probe], timeout=WAIT)
    assert done.returncode == 0, done.stderr
    prefix, fl_core_file = done.stdout.split()
    assert prefix == sys.prefix
    assert Path(fl_core_file).resolve().is_relative_to(Path(__file__).resolve().parents[2])


def test_a_popen_process_is_in_its_host_namespace(netns_hosts: HostsFactory) -> None:
    hosts = netns_hosts(NAMES)
    sleeper = hosts.popen(SITE, ["sleep", "1000"])
    identify = [str(ip_command()), "netns", "identify", str(sleeper.pid)]
    named = subprocess.run(identify, capture_output=True, text=True, check=True).stdout
    assert named.strip() == hosts.namespace(SITE)
    assert sleeper.pid in hosts.pids(SITE)
    assert sleeper.pid not in hosts.pids(SERVER)


def test_close_kills_what_is_left_and_removes_every_trace(netns_hosts: HostsFactory) -> None:
    links = root_links()
    hosts = netns_hosts(NAMES)
    namespaces = [hosts.namespace(name) for name in NAMES] + [hosts.switch]
    assert all(ns in netns_list() for ns in namespaces)
    assert root_links() == links  # the bridge and veths live in the namespaces
    child = hosts.popen(SITE, ["sleep", "1000"])
    # A daemon that is not our child, as a participant started in the background is.
    hosts.run(ADMIN, ["sh", "-c", "sleep 1001 >/dev/null 2>&1 &"], timeout=WAIT)
    [daemon] = hosts.pids(ADMIN)

    left = hosts.close()

    assert sorted((x.host, x.cmdline, x.killed_by) for x in left) == [
        (ADMIN, "sleep 1001", "SIGTERM"),
        (SITE, "sleep 1000", "SIGTERM"),
    ]
    assert child.returncode == -signal.SIGTERM
    status = Path(f"/proc/{daemon}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()
    assert not any(ns in netns_list() for ns in namespaces)
    assert not any((ETC_NETNS / ns).exists() for ns in namespaces)
    assert root_links() == links
    assert hosts.close() == []  # idempotent


def test_close_kills_a_process_that_ignores_sigterm(netns_hosts: HostsFactory) -> None:
    hosts = netns_hosts([SITE])
    hosts.grace = 0.5
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(1000)"
    )
    process = hosts.popen(SITE, [sys.executable, "-c", stubborn], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.stdout.close()
    [left] = hosts.close()
    assert (left.pid, left.killed_by) == (process.pid, "SIGKILL")
    assert process.returncode == -signal.SIGKILL


def test_two_runs_with_the_same_host_names_do_not_collide(netns_hosts: HostsFactory) -> None:
    first, second = netns_hosts(NAMES), netns_hosts(NAMES)
    assert {first.namespace(n) for n in NAMES}.isdisjoint(second.namespace(n) for n in NAMES)
    assert first.switch != second.switch
    assert isinstance(first, Hosts) and first.namespace(SITE).startswith("flt-")
