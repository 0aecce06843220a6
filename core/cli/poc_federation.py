"""POC mode: a whole federation as real processes on this machine.

`prepare` writes a workspace (`federation.yaml`, `server/`, `site-N/`);
`start` spawns the server parent (SP) and one client parent (CP) per site,
detached in their own sessions, and waits until SP reports every site
registered; `stop` asks SP to shut the federation down and makes sure every
process is gone; `status` says what runs. Everything a POC needs lives in
its workspace and every port is chosen by the OS, so two POCs in two
workspaces run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from fl_core.config.federation import (
    FEDERATION_FILE,
    FederationConfig,
    federation_yaml,
    load_federation,
)
from fl_core.containers.poc import admin_client
from fl_core.credentials import CredentialError, new_secret, write_secret
from fl_core.errors import FlCoreError
from fl_core.pids import pid_alive
from fl_core.roles.admin.client import AdminClient, AdminRefusedError

__all__ = [
    "PocError",
    "PocStartError",
    "WorkspaceNotEmptyError",
    "clear",
    "pid_running",
    "prepare",
    "start",
    "status",
    "stop",
    "sweep",
]

PID_FILE: Final = "pid"
LOG_FILE: Final = "log.txt"
TAIL_LINES: Final = 20
"""Lines of a process's log shown when it did not come up."""
KILL_WAIT: Final = 5.0
"""Seconds a process has to exit after SIGTERM before SIGKILL."""
_POLL: Final = 0.1
_MAIN: Final = "fl_core.processes.main"


class PocError(FlCoreError):
    """A POC workspace cannot be prepared, started or stopped."""


class WorkspaceNotEmptyError(PocError):
    """`prepare` was pointed at a folder that already holds something."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        super().__init__(
            f"the POC workspace {workspace} is not empty; "
            "choose another --workspace or pass --force to overwrite it"
        )


class PocStartError(PocError):
    """Some process of the POC did not come up; `tails` holds the end of their logs."""

    def __init__(self, root: Path, problem: str, tails: dict[str, str]) -> None:
        self.root = root
        self.problem = problem
        self.tails = tails
        text = "".join(
            f"\n--- {name} (last {TAIL_LINES} lines of its log)\n{tail.rstrip() or '(empty)'}"
            for name, tail in tails.items()
        )
        super().__init__(f"the POC in {root} did not start: {problem}{text}")


# --- prepare -----------------------------------------------------------------------


def prepare(
    workspace: Path, clients: int, transport: str = "tcp", force: bool = False
) -> FederationConfig:
    """Write a POC workspace with `clients` sites and return its federation config.

    Refuses a non-empty `workspace` unless `force`; even with `force` it
    refuses a workspace whose POC is still running.
    """
    if clients < 1:
        raise PocError(f"a POC needs at least 1 client, got {clients}")
    check_poc_transport(transport)
    workspace = Path(workspace).resolve()
    if workspace.exists() and not workspace.is_dir():
        raise PocError(f"the POC workspace {workspace} is a file, not a folder")
    if workspace.is_dir() and any(workspace.iterdir()):
        if not force:
            raise WorkspaceNotEmptyError(workspace)
        clear(workspace)
    sites = [f"site-{index}" for index in range(1, clients + 1)]
    text = federation_yaml(
        "poc", sites, transport=transport, server={"listen": f"{transport}://127.0.0.1:0"}
    )
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / FEDERATION_FILE).write_text(text)
    config = load_federation(workspace / FEDERATION_FILE)
    for folder in (config.server_dir, *(config.site_dir(site) for site in config.sites)):
        folder.mkdir()
    write_credentials(config)
    return config


def check_poc_transport(name: str) -> None:
    """Refuse a transport that is not installed, or that cannot link processes.

    Raises `UnknownComponentError` (listing the installed transports) or
    `PocError` for one, like the in-process transport, that carries objects
    inside one process only.
    """
    from fl_core.containers.base import build_component
    from fl_core.plugins import make_plugin_manager

    transport = build_component(make_plugin_manager().registry(), "transport", name, {})
    try:
        if transport.carries_objects:
            raise PocError(
                f"transport {name!r} links cells inside one process only; a POC runs "
                "separate processes (use tcp, grpc, or another wire transport)"
            )
    finally:
        transport.close()


def write_credentials(config: FederationConfig) -> None:
    """Fresh secrets for the admin and each site, each in its owner's folder only.

    The server parent gets its own copy of each, to check their proofs
    against; nothing else is shared.
    """
    for party, own in [
        ("admin", config.admin_key_file),
        *((site, config.site_key_file(site)) for site in config.sites),
    ]:
        secret = new_secret()
        write_secret(own, secret)
        write_secret(config.server_key_file(party), secret)


def clear(workspace: Path) -> None:
    """Empty `workspace`; refuses (`PocError`) while the POC prepared there runs."""
    source = workspace / FEDERATION_FILE
    if source.is_file():
        try:
            old = load_federation(source)
        except FlCoreError:
            old = None  # an unreadable old file: nothing of it can be running
        if old is not None and any(pid_running(pid) for _, pid in _pids(old)):
            raise PocError(
                f"the POC in {workspace} is still running; stop it with "
                f"`fl-core poc stop --workspace {workspace}` before preparing it again"
            )
    for entry in workspace.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# --- processes ---------------------------------------------------------------------


def pid_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not; our own zombies are reaped)."""
    try:
        # A POC started by this process is our child: reap it, or it lingers as a zombie.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return pid_alive(pid)


def _is_poc_process(pid: int) -> bool:
    # A stale pid file may name a pid the OS has since given to something else.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_running(pid)  # no /proc: trust the pid file
    return _MAIN.encode() in cmdline


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None if there is none."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _processes(config: FederationConfig) -> list[tuple[str, Path]]:
    """(name, workspace) of SP and every CP."""
    return [("server", config.server_dir)] + [
        (site, config.site_dir(site)) for site in config.sites
    ]


def _pids(config: FederationConfig) -> list[tuple[str, int]]:
    found = []
    for name, folder in _processes(config):
        pid = read_pid(folder / PID_FILE)
        if pid is not None:
            found.append((name, pid))
    return found


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def spawn(args: list[str], folder: Path) -> subprocess.Popen[bytes]:
    """Start `fl_core.processes.main ARGS` in `folder`, appending to its `log.txt`."""
    with open(folder / LOG_FILE, "ab") as log:
        # A new session: Ctrl-C in the user's terminal reaches only the CLI
        # (which then shuts a POC down in order), and a participant started
        # from a kit outlives the command that started it.
        return subprocess.Popen(
            [sys.executable, "-m", _MAIN, *args],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to `timeout` for `pids` to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if pid_running(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(_POLL)
        left = [pid for pid in left if pid_running(pid)]
    return left


def _terminate(pids: list[int], grace: float = KILL_WAIT) -> list[int]:
    """SIGTERM, then SIGKILL what is left after `grace`; returns pids that survived both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        pids = wait_gone(pids, grace)
        if not pids:
            break
    return pids


def _naming(root: Path) -> list[int]:
    """Live processes (not this one) whose command line names a path under `root`."""
    needle = (str(root).rstrip("/") + "/").encode()
    found: list[int] = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found  # no /proc: the pid files are all there is
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if needle in cmdline and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def sweep(root: Path, grace: float = KILL_WAIT) -> list[int]:
    """End every process whose command line names a path under `root`; return their pids.

    For a POC folder that nothing else refers to, such as the temporary one of
    `fl-core run --mode poc`: every process of a POC names its folder (server
    and client parents their `federation.yaml`, job processes and their
    supervisors their job folders, training processes their script). After a
    clean `stop` there is nothing to find; this catches what an interrupted
    `start` spawned but did not get to record. SIGTERM, then SIGKILL after `grace`.
    """
    root = Path(root).resolve()
    ended: list[int] = []
    # Again after each round: a parent ended in one round may have spawned a child just before.
    for _ in range(3):
        found = _naming(root)
        if not found:
            break
        survivors = _terminate(found, grace)
        if survivors:
            raise PocError(f"could not stop processes {survivors} of the POC in {root}")
        ended += found
    return ended


# --- start / stop / status ------------------------------------------------------


def start(
    config: FederationConfig,
    timeout: float = 60.0,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> None:
    """Spawn SP and every CP, and return once SP reports every site registered.

    On failure (a process exits, or `timeout` passes) everything started is
    stopped and `PocStartError` carries the tails of the logs of what did
    not come up.
    """
    running = [(name, pid) for name, pid in _pids(config) if pid_running(pid)]
    if running:
        listed = ", ".join(f"{name} (pid {pid})" for name, pid in running)
        raise PocError(f"the POC in {config.root} is already running: {listed}")
    # Stale files from a POC that was killed would point the waiters at the dead.
    config.url_file.unlink(missing_ok=True)
    for _, folder in _processes(config):
        (folder / PID_FILE).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)

    source = str(config.source)
    started: dict[str, subprocess.Popen[bytes]] = {
        "server": spawn(["server-parent", source], config.server_dir)
    }
    try:
        for site in config.sites:
            started[site] = spawn(["client-parent", source, site], config.site_dir(site))
        _wait_registered(config, started, timeout, on_progress)
    except BaseException:
        # Includes Ctrl-C while waiting: nothing this call started may outlive it.
        _terminate([proc.pid for proc in started.values()])
        for proc in started.values():
            proc.poll()
        _remove_files(config)
        raise


def _wait_registered(
    config: FederationConfig,
    started: dict[str, subprocess.Popen[bytes]],
    timeout: float,
    on_progress: Callable[[str], None] | None,
) -> None:
    deadline = time.monotonic() + timeout
    registered: set[str] = set()
    admin: AdminClient | None = None
    last_error = ""
    try:
        while True:
            exited = {
                name: proc.returncode for name, proc in started.items() if proc.poll() is not None
            }
            if exited:
                problem = ", ".join(
                    f"{name} exited with code {code}" for name, code in exited.items()
                )
                raise _start_error(config, problem, list(exited))
            if config.url_file.is_file():
                try:
                    if admin is None:
                        admin = admin_client(config, wait=0.0, timeout=5.0).connect()
                    now = {str(site.get("site")) for site in admin.sites()}
                except (CredentialError, AdminRefusedError) as exc:
                    # Not a process still starting: waiting would not change it.
                    raise _start_error(config, str(exc), ["server"]) from exc
                except FlCoreError as exc:
                    last_error = str(exc)
                    if admin is not None:
                        admin.close()
                        admin = None
                else:
                    for site in sorted((now - registered) & set(config.sites)):
                        if on_progress is not None:
                            on_progress(f"{site} registered")
                    registered |= now
                    if set(config.sites) <= registered:
                        return
            if time.monotonic() >= deadline:
                if not config.url_file.is_file():
                    problem = f"the server parent wrote no URL file ({config.url_file})"
                    raise _start_error(config, f"{problem} within {timeout:g} s", ["server"])
                missing = [site for site in config.sites if site not in registered]
                problem = f"sites not registered within {timeout:g} s: {', '.join(missing)}"
                if last_error:
                    problem += f" (last error: {last_error})"
                raise _start_error(config, problem, ["server", *missing])
            time.sleep(_POLL)
    finally:
        if admin is not None:
            admin.close()


def _start_error(config: FederationConfig, problem: str, names: list[str]) -> PocStartError:
    folders = dict(_processes(config))
    return PocStartError(
        config.root, problem, {name: _tail(folders[name] / LOG_FILE) for name in names}
    )


def _remove_files(config: FederationConfig) -> None:
    for _, folder in _processes(config):
        (folder / PID_FILE).unlink(missing_ok=True)
    config.url_file.unlink(missing_ok=True)


def stop(config: FederationConfig, timeout: float = 30.0) -> list[str]:
    """Shut the POC down and make sure every process of it is gone.

    Asks SP to shut down (it stops the jobs and the client parents), waits up
    to `timeout` for every pid in the pid files to exit, then SIGTERMs and
    finally SIGKILLs what is left. Returns notes on what needed force (empty
    when the shutdown was clean); raises `PocError` if a process survives
    SIGKILL.
    """
    pids = {name: pid for name, pid in _pids(config) if pid_running(pid) and _is_poc_process(pid)}
    notes: list[str] = []
    if "server" in pids:
        try:
            with admin_client(config, wait=0.0, timeout=10.0) as admin:
                admin.shutdown()
        except FlCoreError as exc:
            notes.append(f"the server parent did not take the shutdown ({exc}); terminating")
    left = wait_gone(pids.values(), timeout if "server" in pids else 0.0)
    if left:
        names = [name for name, pid in pids.items() if pid in left]
        if "server" in pids:
            notes.append(f"still running after {timeout:g} s: {', '.join(names)}; terminating")
        survivors = _terminate(left)
        if survivors:
            raise PocError(f"could not stop processes {survivors} of the POC in {config.root}")
    _remove_files(config)
    return notes


def status(config: FederationConfig) -> dict[str, Any]:
    """What runs: `{root, running, server: {pid, alive, url}, sites: {site: {pid, alive,
    registered, last_seen}}, jobs: [job record...], error}`."""
    pids = dict(_pids(config))

    def process(name: str) -> dict[str, Any]:
        pid = pids.get(name)
        return {"pid": pid, "alive": pid is not None and pid_running(pid)}

    server = process("server")
    try:
        server["url"] = config.url_file.read_text().strip() or None
    except OSError:
        server["url"] = None
    sites = {
        site: {**process(site), "registered": False, "last_seen": None} for site in config.sites
    }
    jobs: list[dict[str, Any]] = []
    error = None
    if server["alive"]:
        try:
            with admin_client(config, wait=0.0, timeout=10.0) as admin:
                for entry in admin.sites():
                    name = str(entry.get("site"))
                    if name in sites:
                        sites[name]["registered"] = True
                        sites[name]["last_seen"] = entry.get("last_seen")
                jobs = admin.list()
        except FlCoreError as exc:
            error = str(exc)
    elif (config.server_dir / "jobs").is_dir():
        # The server parent is down, but its job store on disk still knows every job.
        from fl_core.roles.server_parent.job_store import JobStore

        jobs = [entry.to_json() for entry in JobStore(config.server_dir / "jobs").entries()]
    running = server["alive"] and all(s["alive"] and s["registered"] for s in sites.values())
    return {
        "root": str(config.root),
        "running": running,
        "server": server,
        "sites": sites,
        "jobs": jobs,
        "error": error,
    }
