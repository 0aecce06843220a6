"""`fl-core start|stop|status KIT`: run a participant of a production federation from its kit.

A kit made by `fl-core provision` belongs to one participant: the server
(its server parent), a site (its client parent) or an admin (who starts
nothing, and runs `fl-core job ... --kit KIT`). `start` launches the
parent in the background with its workspace inside the kit, `stop` ends it
and everything it started, `status` shows what it last reported and how
long its certificate has left.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Final, TextIO

from fl_core.cli.processes import (
    LOG_FILE,
    PID_FILE,
    pid_running,
    read_pid,
    spawn,
    sweep,
    wait_gone,
)
from fl_core.cli.usage import UsageError
from fl_core.config.federation import URL_FILE, load_federation
from fl_core.config.kit import KitConfig, load_kit
from fl_core.errors import FlCoreError
from fl_core.pids import STATUS_FILE, read_tail

EXPIRY_WARNING_DAYS: Final = 30


class KitError(FlCoreError):
    """A kit's participant could not be started or stopped; the message says why."""


def add_kit_parsers(sub: Any) -> None:
    """Add `start`, `stop` and `status` to the `fl-core` parser."""
    for name, text in (
        ("start", "start the participant a startup kit belongs to, in the background"),
        ("stop", "stop a kit's participant and everything it started"),
        ("status", "show a kit's participant: state, peers, jobs, certificate expiry"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument(
            "kit", type=Path, help="the startup kit folder (from fl-core provision)"
        )
        parser.add_argument(
            "--workspace",
            type=Path,
            help="where the participant keeps jobs, logs and its audit log (default: in the kit)",
        )
        if name == "start":
            parser.add_argument(
                "--timeout", type=float, default=60.0, help="seconds to wait for it to come up"
            )


def kit_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run `start`, `stop` or `status`; the exit code."""
    kit = load_kit(args.kit)
    if args.workspace is not None:
        kit = elsewhere(kit, args.workspace)
    if args.command == "status":
        return status(kit, out)
    if kit.kind == "admin":
        raise UsageError(
            f"{kit.root} is an admin's kit: it starts nothing; run "
            f"`fl-core job submit JOB --kit {kit.root}` (and the other job commands) with it"
        )
    if args.command == "start":
        start(kit, out, args.timeout)
    else:
        stop(kit, out)
    return 0


def elsewhere(kit: KitConfig, workspace: Path) -> KitConfig:
    """`kit` run with its workspace under `workspace`: a copy of its federation file there.

    The copy names the kit (`security.options.kit`), so the certificate, key,
    revocation list and policies are still read from the kit itself.
    """
    from dataclasses import replace

    import yaml

    workspace = workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(kit.federation_file.read_text())
    security = data.get("security") if isinstance(data, dict) else None
    if isinstance(security, str):
        security = {"name": security}
    if not isinstance(security, dict):
        raise KitError(f"{kit.federation_file}: no security provider to point at the kit")
    data["security"] = {
        **security,
        "options": {**security.get("options", {}), "kit": str(kit.root)},
    }
    (workspace / "federation.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return replace(kit, elsewhere=workspace)


def running_pid(kit: KitConfig) -> int | None:
    """The pid of the kit's parent process if it runs, else None."""
    pid = read_pid(kit.workspace / PID_FILE)
    return pid if pid is not None and pid_running(pid) else None


def _status_file(kit: KitConfig) -> dict[str, Any]:
    try:
        data = json.loads((kit.workspace / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start(kit: KitConfig, out: TextIO, timeout: float = 60.0) -> None:
    """Launch the kit's parent process and wait until it is up (listening, or joined)."""
    federation = load_federation(kit.federation_file)  # a broken kit fails here, not later
    running = running_pid(kit)
    if running is not None:
        raise KitError(f"{kit.name} is already running from {kit.root} (pid {running})")
    workspace = kit.workspace
    workspace.mkdir(parents=True, exist_ok=True)
    for stale in (PID_FILE, STATUS_FILE, URL_FILE):
        (workspace / stale).unlink(missing_ok=True)
    role = (
        ["server-parent", str(kit.federation_file)]
        if kit.kind == "server"
        else ["client-parent", str(kit.federation_file), kit.name]
    )
    log = workspace / LOG_FILE
    offset = log.stat().st_size if log.is_file() else 0
    proc = spawn(role, workspace)
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            tail = read_tail(log, 4000, offset).strip()
            raise KitError(
                f"{kit.name} exited with code {code} while starting; its log says:\n{tail}"
            )
        state = _status_file(kit)
        if kit.kind == "server" and (workspace / URL_FILE).is_file():
            url = (workspace / URL_FILE).read_text().strip()
            out.write(
                f"{kit.name}: server parent of {kit.project} listening on {url} (pid {proc.pid})\n"
            )
            return
        if kit.kind == "site" and state.get("connected"):
            out.write(
                f"{kit.name}: client parent joined {federation.server.url or state.get('server')} "
                f"(pid {proc.pid})\n"
            )
            return
        if time.monotonic() > deadline:
            out.write(
                f"{kit.name}: started (pid {proc.pid}) but not up within {timeout:g} s; "
                f"it keeps trying: see {log}\n"
            )
            return
        time.sleep(0.1)


def stop(kit: KitConfig, out: TextIO, timeout: float = 30.0) -> None:
    """Stop the kit's parent (its jobs stop with it), then end anything left of it."""
    pid = running_pid(kit)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_gone([pid], timeout)
    # Every process of this participant names the kit (or its workspace elsewhere).
    left = sweep(kit.root)
    if kit.elsewhere is not None:
        left += sweep(kit.elsewhere)
    (kit.workspace / PID_FILE).unlink(missing_ok=True)
    if pid is None and not left:
        out.write(f"{kit.name}: not running\n")
        return
    forced = f"; ended {len(left)} process(es) that outlived it: {left}" if left else ""
    out.write(f"{kit.name}: stopped{forced}\n")


def certificate_days(kit: KitConfig) -> float | None:
    """Days until the kit's certificate expires (negative once expired); None if unreadable."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(kit.certificate.read_bytes())
    except (OSError, ValueError):
        return None
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left.total_seconds() / 86400


def status(kit: KitConfig, out: TextIO) -> int:
    """Print the participant's state; 0 when it runs (or is an admin's kit), 3 when stopped."""
    out.write(f"{kit.name} ({kit.role}, org {kit.org or '-'}) of project {kit.project}\n")
    days = certificate_days(kit)
    if days is None:
        out.write(f"  certificate: cannot be read ({kit.certificate})\n")
    else:
        warn = "  WARNING: renew it soon" if days < EXPIRY_WARNING_DAYS else ""
        out.write(f"  certificate: expires in {int(days)} days{warn}\n")
    if kit.kind == "admin":
        return 0
    pid = running_pid(kit)
    if pid is None:
        out.write("  state: stopped\n")
        return 3
    state = _status_file(kit)
    out.write(f"  state: running (pid {pid})\n")
    if kit.kind == "server":
        out.write(f"  listening: {state.get('url', '?')}\n")
        out.write(f"  sites connected: {', '.join(state.get('sites', [])) or 'none'}\n")
    else:
        joined = "connected" if state.get("connected") else "not connected"
        out.write(f"  server: {state.get('server', '?')} ({joined})\n")
    out.write(f"  running jobs: {', '.join(state.get('jobs', [])) or 'none'}\n")
    return 0
