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

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fl_core.cli.processes import (
    LOG_FILE,
    PID_FILE,
    POLL,
    TAIL_LINES,
    is_runtime_process,
    pid_running,
    read_pid,
    spawn,
    sweep,
    tail,
    terminate,
    wait_gone,
)
from fl_core.config.federation import (
    FEDERATION_FILE,
    FederationConfig,
    federation_yaml,
    load_federation,
)
from fl_core.containers.poc import admin_client
from fl_core.credentials import CredentialError, new_secret, write_secret
from fl_core.errors import FlCoreError
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
    check_poc_transport(transport)
    workspace, sites = make_room(workspace, clients, force)
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


def make_room(
    workspace: Path, clients: int, force: bool, before_clear: Callable[[Path], None] | None = None
) -> tuple[Path, list[str]]:
    """The resolved `workspace`, emptied with `force`, and the names of `clients` sites.

    Refuses fewer than one client, a file, and a non-empty folder without
    `force`; `before_clear` may refuse too (a POC of another kind running there).
    """
    if clients < 1:
        raise PocError(f"a POC needs at least 1 client, got {clients}")
    workspace = Path(workspace).resolve()
    if workspace.exists() and not workspace.is_dir():
        raise PocError(f"the POC workspace {workspace} is a file, not a folder")
    if workspace.is_dir() and any(workspace.iterdir()):
        if not force:
            raise WorkspaceNotEmptyError(workspace)
        if before_clear is not None:
            before_clear(workspace)
        clear(workspace)
    return workspace, [f"site-{index}" for index in range(1, clients + 1)]


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
        terminate([proc.pid for proc in started.values()])
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
            time.sleep(POLL)
    finally:
        if admin is not None:
            admin.close()


def _start_error(config: FederationConfig, problem: str, names: list[str]) -> PocStartError:
    folders = dict(_processes(config))
    return PocStartError(
        config.root, problem, {name: tail(folders[name] / LOG_FILE) for name in names}
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
    pids = {
        name: pid for name, pid in _pids(config) if pid_running(pid) and is_runtime_process(pid)
    }
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
        survivors = terminate(left)
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
