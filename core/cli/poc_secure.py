"""A secure POC: a local production project, run from its startup kits.

`fl-core poc prepare --secure` provisions a project on this machine with
`fl_core.provision` (server `localhost` on a port free now, sites
`site-1..N`, one admin `admin@poc.local` with the role project_admin) and
keeps its kits in the POC workspace:

    WORKSPACE/project.yml            what was provisioned
    WORKSPACE/kits/poc/ca/           the project's CA
    WORKSPACE/kits/poc/localhost/    the server's kit (its workspace inside it)
    WORKSPACE/kits/poc/site-N/       each site's kit
    WORKSPACE/kits/poc/admin@poc.local/  the admin's kit (`fl-core job ...`)

`start`, `stop` and `status` run each participant exactly as production
does (`fl_core.cli.kits`: `fl-core start KIT` per participant), and the job
commands use the admin's kit, so a secure POC exercises mutual TLS, names
bound to certificates, signed jobs and both policies on one machine. The
only change to the kits as provisioned: the server listens on loopback, not
on every interface.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from fl_core.cli import kits
from fl_core.cli.poc_federation import PocError, PocStartError, make_room
from fl_core.config.federation import FEDERATION_FILE, FederationConfig, load_federation
from fl_core.config.kit import KitConfig, load_kit
from fl_core.errors import FlCoreError

__all__ = [
    "ADMIN",
    "PROJECT",
    "SecurePoc",
    "is_secure",
    "load_secure",
    "prepare_secure",
    "refuse_running",
    "start_secure",
    "status_secure",
    "stop_secure",
]

PROJECT: Final = "poc"
SERVER: Final = "localhost"
ADMIN: Final = "admin@poc.local"
PROJECT_FILE: Final = "project.yml"
KITS: Final = "kits"
_POLL: Final = 0.1


@dataclass(frozen=True, slots=True)
class SecurePoc:
    """The kits of a secure POC workspace."""

    root: Path
    sites: tuple[str, ...]

    @property
    def kits(self) -> Path:
        """`WORKSPACE/kits/poc`: the provisioned project."""
        return self.root / KITS / PROJECT

    def kit(self, name: str) -> KitConfig:
        """The kit of participant `name` (`localhost`, a site, or the admin)."""
        return load_kit(self.kits / name)

    @property
    def participants(self) -> list[str]:
        """The server, then every site: what runs."""
        return [SERVER, *self.sites]

    def admin_federation(self) -> FederationConfig:
        """The federation as the admin's kit describes it (for `admin_client`)."""
        return load_federation(self.kits / ADMIN / FEDERATION_FILE)


def is_secure(workspace: Path) -> bool:
    """Whether `workspace` holds a secure POC (a project.yml, no federation.yaml)."""
    workspace = Path(workspace)
    return (workspace / PROJECT_FILE).is_file() and not (workspace / FEDERATION_FILE).exists()


def load_secure(workspace: Path) -> SecurePoc:
    """The secure POC in `workspace`; `PocError` when its project was not provisioned."""
    from fl_core.provision import load_project

    root = Path(workspace).resolve()
    project = load_project(root / PROJECT_FILE)
    poc = SecurePoc(root, tuple(site.name for site in project.sites))
    if not (poc.kits / SERVER).is_dir():
        raise PocError(
            f"{root} holds no kits of its project; prepare it again with "
            f"`fl-core poc prepare --secure --force --workspace {root}`"
        )
    return poc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _running(poc: SecurePoc) -> list[str]:
    found = []
    for name in poc.participants:
        try:
            pid = kits.running_pid(poc.kit(name))
        except FlCoreError:
            continue  # no kit there (any more): nothing of it runs
        if pid is not None:
            found.append(f"{name} (pid {pid})")
    return found


def refuse_running(workspace: Path) -> None:
    """`PocError` if a secure POC in `workspace` still runs (nothing to do for others)."""
    if not is_secure(workspace):
        return
    try:
        running = _running(load_secure(workspace))
    except FlCoreError:
        running = []  # a broken earlier POC: nothing of it can be running
    if running:
        raise PocError(
            f"the POC in {workspace} is still running ({', '.join(running)}); stop it "
            f"with `fl-core poc stop --workspace {workspace}` before preparing it again"
        )


def prepare_secure(
    workspace: Path, clients: int, transport: str = "grpc", force: bool = False
) -> SecurePoc:
    """Provision a local project with `clients` sites into `workspace` (see the module doc).

    Refuses a non-empty `workspace` unless `force`, and even then one whose
    POC (plain or secure) still runs.
    """
    from fl_core.provision import provision

    workspace, sites = make_room(workspace, clients, force, refuse_running)
    workspace.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f"{{name: {site}, org: {PROJECT}}}" for site in sites)
    (workspace / PROJECT_FILE).write_text(
        f"project: {PROJECT}\n"
        f"transport: {transport}\n"
        f"server: {{name: {SERVER}, host: {SERVER}, port: {_free_port()}, org: {PROJECT}}}\n"
        f"sites: [{listed}]\n"
        f"admins: [{{name: {ADMIN}, org: {PROJECT}, role: project_admin}}]\n"
    )
    provision(workspace / PROJECT_FILE, workspace / KITS)
    poc = load_secure(workspace)
    # A POC is for this machine only: the server kit's wildcard listen becomes loopback.
    federation = poc.kits / SERVER / FEDERATION_FILE
    text = federation.read_text()
    local = text.replace(f"listen: {transport}://0.0.0.0:", f"listen: {transport}://127.0.0.1:")
    if local == text:
        raise PocError(f"{federation}: no wildcard listen address to bind to loopback")
    federation.write_text(local)
    return poc


class _Lines(io.StringIO):
    """What `fl_core.cli.kits` prints, passed on line by line."""

    def __init__(self, sink: Callable[[str], None] | None) -> None:
        super().__init__()
        self.sink = sink

    def write(self, text: str) -> int:
        if self.sink is not None:
            for line in text.splitlines():
                self.sink(line)
        return len(text)


def start_secure(
    poc: SecurePoc, timeout: float = 60.0, *, on_progress: Callable[[str], None] | None = None
) -> None:
    """`fl-core start KIT` for the server and every site; returns once every site registered.

    On failure everything started is stopped and `PocStartError` carries
    what went wrong (a kit that does not start says why, e.g. its key file).
    """
    from fl_core.containers.poc import admin_client

    running = _running(poc)
    if running:
        raise PocError(f"the POC in {poc.root} is already running: {', '.join(running)}")
    out = _Lines(on_progress)
    try:
        for name in poc.participants:
            try:
                kits.start(poc.kit(name), out, timeout)
            except FlCoreError as exc:
                raise PocStartError(poc.root, f"{name} did not start: {exc}", {}) from exc
        deadline = time.monotonic() + timeout
        registered: set[str] = set()
        last = ""
        while not set(poc.sites) <= registered:
            try:
                with admin_client(poc.admin_federation(), wait=0.0, timeout=5.0) as admin:
                    registered = {str(site.get("site")) for site in admin.sites()}
            except FlCoreError as exc:
                last = f" (last error: {exc})"
            if time.monotonic() > deadline:
                missing = ", ".join(s for s in poc.sites if s not in registered)
                raise PocStartError(
                    poc.root, f"sites not registered within {timeout:g} s: {missing}{last}", {}
                )
            if not set(poc.sites) <= registered:
                time.sleep(_POLL)
    except BaseException:
        # Includes Ctrl-C while waiting: nothing this call started may outlive it.
        stop_secure(poc)
        raise


def stop_secure(poc: SecurePoc) -> list[str]:
    """`fl-core stop KIT` for every site, then the server; returns what each said."""

    notes: list[str] = []
    out = _Lines(notes.append)
    for name in [*poc.sites, SERVER]:
        kits.stop(poc.kit(name), out)
    return notes


def status_secure(poc: SecurePoc, out: TextIO) -> dict[str, Any]:
    """Print `fl-core status KIT` of each participant; returns the jobs and whether all run."""
    from fl_core.containers.poc import admin_client

    # Every participant's status is printed, whatever the first one says.
    codes = [kits.status(poc.kit(name), out) for name in poc.participants]
    alive = all(code == 0 for code in codes)
    jobs: list[dict[str, Any]] = []
    error = ""
    registered: set[str] = set()
    if alive:
        try:
            with admin_client(poc.admin_federation(), wait=0.0, timeout=10.0) as admin:
                registered = {str(site.get("site")) for site in admin.sites()}
                jobs = admin.list()
        except FlCoreError as exc:
            error = str(exc)
    return {
        "running": alive and set(poc.sites) <= registered,
        "jobs": jobs,
        "error": error,
    }
