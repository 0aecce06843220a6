"""Real hosts for end-to-end tests: one Linux network namespace per host name.

`Hosts({"server.example.org": "server", "site-1": "site-1"})` makes a namespace
per host (named `flt-<run>-<label>`), plugs each into one bridge that lives in
a namespace of its own (`flt-<run>-switch`, so the root namespace gains no
link), gives it an address on a private /24 and writes `/etc/netns/<ns>/hosts`
naming every host. `ip netns exec` bind-mounts that file over `/etc/hosts` for
the process it starts, so the participants find each other by host name, as
they would on separate machines. The file system is shared: a process in a
namespace runs the same venv python and reads the same kits.

Needs root and iproute2's `ip`. Independent of fl_core: it only runs commands.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ETC_NETNS = Path("/etc/netns")
RUN_NETNS = Path("/var/run/netns")  # where `ip netns add` mounts each namespace
# A proxy configured for the root namespace is unreachable from a host, and grpc
# honours these variables: a client would try the proxy instead of the server.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy", "no_proxy")


def ip_command() -> str | None:
    """The path of iproute2's `ip`, or None; sbin is often off a user's PATH."""
    found = shutil.which("ip")
    if found:
        return found
    return next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)


class NetnsError(RuntimeError):
    """A namespace could not be set up or torn down; the message names the command."""


@dataclass(frozen=True)
class Leftover:
    """A process `Hosts.close` found still running in a host and had to kill."""

    host: str
    pid: int
    cmdline: str
    killed_by: str  # "SIGTERM" or "SIGKILL"


class Hosts:
    """Network namespaces joined by one bridge, one per host name; a context manager.

    `names` maps each host name to a short label for its namespace name (or is
    a list of host names, each its own label). Every method takes the host name.
    """

    def __init__(self, names: Mapping[str, str] | Iterable[str], grace: float = 5.0) -> None:
        labels = dict(names) if isinstance(names, Mapping) else {n: n for n in names}
        ip = ip_command()
        if ip is None:
            raise NetnsError("iproute2's `ip` is not installed: apt-get install iproute2")
        self._ip = ip
        self.grace = grace
        self.run_id = secrets.token_hex(3)
        self._namespaces: dict[str, str] = {}
        self._addresses: dict[str, str] = {}
        self._popens: list[subprocess.Popen[str]] = []
        self._closed = False
        self.switch = f"flt-{self.run_id}-switch"
        if not 0 < len(labels) <= 200:
            raise ValueError(f"Hosts needs 1 to 200 host names, got {len(labels)}")
        for host, label in labels.items():
            clean = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
            ns = f"flt-{self.run_id}-{clean}"
            if ns == self.switch or ns in self._namespaces.values():
                raise ValueError(f"host label {label!r} is taken; give each host its own")
            self._namespaces[host] = ns
        atexit.register(self.close)
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        subnet = self._free_subnet()
        self._ip_run("netns", "add", self.switch)
        self._ip_run("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._ip_run("-n", self.switch, "link", "set", "br0", "up")
        for index, (host, ns) in enumerate(self._namespaces.items()):
            self._addresses[host] = f"{subnet}.{10 + index}"
            self._ip_run("netns", "add", ns)
            # Made inside the namespaces, so no name is ever taken in the root one.
            port = f"v{index}"
            self._ip_run("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port)
            self._ip_run("-n", ns, "link", "set", port, "netns", self.switch)
            self._ip_run("-n", self.switch, "link", "set", port, "master", "br0", "up")
            self._ip_run("-n", ns, "addr", "add", f"{self._addresses[host]}/24", "dev", "eth0")
            self._ip_run("-n", ns, "link", "set", "eth0", "up")
            self._ip_run("-n", ns, "link", "set", "lo", "up")
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{address}\t{host}" for host, address in self._addresses.items()]
        for ns in self._namespaces.values():
            folder = ETC_NETNS / ns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")

    def _free_subnet(self) -> str:
        """A 10.231.X prefix that no address of the root namespace is in."""
        used = self._ip_run("-o", "addr").stdout
        free = [x for x in range(256) if f"10.231.{x}." not in used]
        if not free:
            raise NetnsError("every 10.231.X.0/24 is in use in the root namespace")
        return f"10.231.{random.choice(free)}"

    def _ip_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self._ip, *args], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
        return done

    def namespace(self, host: str) -> str:
        """The name of `host`'s network namespace (as `ip netns` lists it)."""
        if host not in self._namespaces:
            raise KeyError(f"{host!r} is not one of these hosts: {sorted(self._namespaces)}")
        return self._namespaces[host]

    def address(self, host: str) -> str:
        """`host`'s IPv4 address on the bridge."""
        self.namespace(host)
        return self._addresses[host]

    @property
    def names(self) -> list[str]:
        """The host names, in the order given."""
        return list(self._namespaces)

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside `host`."""
        return [self._ip, "netns", "exec", self.namespace(host), *argv]

    @staticmethod
    def environment(env: Mapping[str, str] | None) -> dict[str, str]:
        """`env` (default: this process's environment) without proxy variables."""
        base = dict(os.environ if env is None else env)
        return {k: v for k, v in base.items() if k.lower() not in PROXY_VARIABLES}

    def run(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `host` to completion; output captured as text."""
        return subprocess.run(
            self.command(host, argv),
            env=self.environment(env),
            cwd=cwd,
            timeout=timeout,
            check=check,
            capture_output=True,
            text=True,
        )

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[str]:
        """Start `argv` in `host` in the background (text mode; Popen keywords pass through).

        `ip netns exec` execs the command, so the Popen's pid is the command's own.
        Returns once that pid is inside the namespace (or has exited), so a
        `pids()` or `close()` right after it cannot miss the process.
        """
        process: subprocess.Popen[str] = subprocess.Popen(
            self.command(host, argv), env=self.environment(env), cwd=cwd, text=True, **kwargs
        )
        self._popens.append(process)
        target = os.stat(RUN_NETNS / self.namespace(host))
        deadline = time.monotonic() + 30.0
        while process.poll() is None and time.monotonic() < deadline:
            try:
                net = os.stat(f"/proc/{process.pid}/ns/net")
            except OSError:
                continue  # exiting: poll() will say so
            if (net.st_dev, net.st_ino) == (target.st_dev, target.st_ino):
                break
            time.sleep(0.005)
        return process

    def pids(self, host: str) -> list[int]:
        """The live processes in `host`'s namespace (zombies are not in it any more)."""
        return self._pids(self.namespace(host))

    def _pids(self, ns: str) -> list[int]:
        out = self._ip_run("netns", "pids", ns).stdout
        return sorted(int(word) for word in out.split())

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> list[Leftover]:
        """Kill what is left in each host, then delete namespaces, switch and /etc/netns files.

        Returns the processes it had to kill ([] when every participant had
        stopped by itself). Idempotent; every step runs even if one fails, and
        the failures are raised together at the end.
        """
        if self._closed:
            return []
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        leftovers: list[Leftover] = []
        try:
            existing = self._existing()
        except Exception as error:
            errors.append(str(error))
            existing = {*self._namespaces.values(), self.switch}
        for host, ns in self._namespaces.items():
            if ns in existing:
                try:
                    leftovers += self._kill_all(host, ns)
                except Exception as error:
                    errors.append(f"killing the processes of {ns}: {error}")
        for ns in [*self._namespaces.values(), self.switch]:
            try:
                if ns in existing:
                    self._ip_run("netns", "del", ns)
            except Exception as error:
                errors.append(str(error))
            finally:
                shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        for process in self._popens:
            process.poll()  # so that none is reported "still running" when collected
        if errors:
            raise NetnsError(f"closing hosts {self.run_id} (killed {leftovers}): {errors}")
        return leftovers

    def _existing(self) -> set[str]:
        out = self._ip_run("netns", "list").stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def _kill_all(self, host: str, ns: str) -> list[Leftover]:
        killed: dict[int, Leftover] = {}
        for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 10.0)):
            for pid in self._pids(ns):
                cmdline = killed[pid].cmdline if pid in killed else _cmdline(pid)
                killed[pid] = Leftover(host, pid, cmdline, sig.name)
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self._reaped_pids(ns) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._pids(ns):
                return list(killed.values())
        raise NetnsError(f"processes {self._pids(ns)} in {ns} survived SIGKILL")

    def _reaped_pids(self, ns: str) -> list[int]:
        # Our own children would stay zombies until waited for; reap them first.
        for process in self._popens:
            process.poll()
        return self._pids(ns)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
