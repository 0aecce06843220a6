"""`bench/production.py --part job`: hello-numpy in production against the same job in POC.

Production: a project provisioned with `fl-core provision` (grpc, so mutual
TLS with names checked), the server and two sites each started from its kit
by `fl-core start` in its own network namespace (`tests/e2e/netns.Hosts`),
the admin in a fourth one. POC: `fl-core poc prepare --clients 2 --transport
grpc` and `poc start` on this machine (plaintext loopback, as POC is).

Both federations are up at the same time and the jobs alternate (production,
POC, production, ...), so drift in the machine's load hits both alike. Each
job is timed by the same code, an admin process (`role_job_admin`) that is
connected and has seen both sites registered before the clock starts: from
the call that submits hello-numpy (N=2, R=5) to the first status that says
the job ended, polling every `POLL` seconds. Target: production <= 1.3x POC.
Needs root (namespaces) and iproute2's `ip`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "hello-numpy"
SERVER = "server.example.org"
PROJECT = f"""\
project: bench-net
transport: grpc
server: {{name: {SERVER}, host: {SERVER}, port: 8002, org: bench}}
sites:
  - {{name: site-1, org: a}}
  - {{name: site-2, org: b}}
admins:
  - {{name: admin@a.org, org: a, role: project_admin}}
"""
ADMIN = "admin@a.org"
POLL = 0.05
"""Seconds between status requests while a timed job runs (both modes)."""


def role_job_admin(where: str, job: str, sites: int) -> None:
    """Submit `job` once and print the seconds from submit to its end, as JSON.

    `where` is an admin kit (production) or a POC workspace. The admin first
    waits, untimed, until `sites` sites are registered.
    """
    from fl_core.config.federation import load_federation
    from fl_core.config.kit import load_kit
    from fl_core.containers.poc import admin_client
    from fl_core.roles.protocol.parent import JobState

    path = Path(where)
    if (path / "kit.yaml").is_file():
        config = load_federation(load_kit(path).federation_file)
    else:
        config = load_federation(path)
    with admin_client(config) as admin:
        deadline = time.monotonic() + 120
        while len(admin.sites()) < sites:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {sites} sites registered after 120 s")
            time.sleep(0.1)
        started = time.perf_counter()
        job_id = admin.submit(Path(job))
        submitted = time.perf_counter() - started
        seen: dict[str, float] = {}  # state -> seconds after submit it was first seen
        while True:
            record = admin.status(job_id)
            state = JobState(str(record.get("state")))
            seen.setdefault(state, time.perf_counter() - started)
            if state.final:
                break
            time.sleep(POLL)
        seconds = time.perf_counter() - started
    rounds = [float(t) for t in record.get("round_seconds") or []]
    result = {"seconds": seconds, "state": record.get("state"), "id": job_id}
    print(json.dumps({**result, "submit": submitted, "seen": seen, "rounds": rounds}))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fl_core.cli", *args]


def _checked(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def _hello_job(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("train.py", "initial_model.npz", "job.yaml"):
        shutil.copy(HELLO / name, folder / name)
    text = (folder / "job.yaml").read_text()
    if "rounds: 5" not in text or "min_clients: 2" not in text:
        raise RuntimeError(f"{HELLO / 'job.yaml'} is no longer N=2 R=5: adjust the benchmark")
    return folder


def _timed(run: Callable[[], subprocess.CompletedProcess[str]], what: str) -> dict[str, Any]:
    lines = _checked(run(), what).strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1])
    if result["state"] != "finished":
        raise RuntimeError(f"{what}: job {result['id']} ended {result['state']}")
    return result


def part_job(repeat: int) -> None:
    """Print production and POC submit-to-finished times, the runs and the ratio."""
    sys.path.insert(0, str(REPO))  # tests/e2e/netns.py: the e2e tests' namespaces
    from tests.e2e.netns import Hosts, ip_command

    if ip_command() is None:
        raise SystemExit("--part job needs iproute2's `ip` (and root)")
    tmp = Path(tempfile.mkdtemp(prefix="fl-bench-job-"))
    bench = [sys.executable, str(Path(__file__).with_name("production.py"))]
    figures: dict[str, list[dict[str, Any]]] = {"production": [], "poc": []}
    poc = tmp / "poc"
    poc_started = False
    hosts = Hosts({SERVER: "server", "site-1": "site-1", "site-2": "site-2", "admin": "admin"})
    kits = tmp / "out" / "bench-net"
    try:
        job = _hello_job(tmp / "hello-numpy")
        (tmp / "project.yml").write_text(PROJECT)
        provision = _cli("provision", str(tmp / "project.yml"), "--out", str(tmp / "out"))
        _checked(hosts.run("admin", provision), "fl-core provision")
        for host in (SERVER, "site-1", "site-2"):
            _checked(hosts.run(host, _cli("start", str(kits / host))), f"fl-core start {host}")
        _checked(
            subprocess.run(
                _cli(
                    "poc",
                    "prepare",
                    "--workspace",
                    str(poc),
                    *("--clients", "2"),
                    "--transport",
                    "grpc",
                ),
                capture_output=True,
                text=True,
                check=False,
            ),
            "fl-core poc prepare",
        )
        poc_started = True
        _checked(
            subprocess.run(
                _cli("poc", "start", "--workspace", str(poc)),
                capture_output=True,
                text=True,
                check=False,
            ),
            "fl-core poc start",
        )
        admin_kit = str(kits / ADMIN)
        runs: dict[str, Callable[[], subprocess.CompletedProcess[str]]] = {
            "production": lambda: hosts.run(
                "admin", [*bench, "--role", "job-admin", admin_kit, str(job), "2"], timeout=600
            ),
            "poc": lambda: subprocess.run(
                [*bench, "--role", "job-admin", str(poc), str(job), "2"],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            ),
        }
        for _ in range(repeat):
            for mode, run in runs.items():
                figures[mode].append(_timed(run, f"the {mode} job"))
    finally:
        if poc_started:
            subprocess.run(_cli("poc", "stop", "--workspace", str(poc)), capture_output=True)
        for host in (SERVER, "site-1", "site-2"):
            if (kits / host).is_dir():
                hosts.run(host, _cli("stop", str(kits / host)))
        left = hosts.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if left:
            print(f"  (had to kill what outlived `fl-core stop`: {left})")
    _report(figures, repeat)


def _report(figures: dict[str, list[dict[str, Any]]], repeat: int) -> None:
    print(
        f"hello-numpy N=2 R=5, submit -> finished (status polled every {POLL:g} s), "
        f"median of {repeat}, jobs alternating"
    )
    medians = {}
    for mode, what in (
        ("poc", "POC (grpc, loopback, no TLS)"),
        ("production", "production (grpc + mTLS, 4 namespaces, kits)"),
    ):
        runs = figures[mode]
        medians[mode] = statistics.median(r["seconds"] for r in runs)
        shown = " ".join(f"{r['seconds']:.2f}" for r in runs)
        ratio = "(baseline)" if mode == "poc" else f"= {medians[mode] / medians['poc']:.2f}x"
        print(f"  {what:46s} {medians[mode]:6.2f} s {ratio}  [{shown}]")
        # Where the time went: the submit call, until the job was seen running, its
        # rounds as the server job timed them, and the rest (the end, the last poll).
        submit = statistics.median(r["submit"] for r in runs)
        running = statistics.median(r["seen"].get("running", r["seconds"]) for r in runs)
        rounds = statistics.median(sum(r["rounds"]) for r in runs)
        print(
            f"    submit call {submit:.2f} s; seen running after {running:.2f} s; "
            f"rounds {rounds:.2f} s "
            f"({' '.join(f'{t:.2f}' for t in _median_run(runs)['rounds'])})"
        )
    ratio = medians["production"] / medians["poc"]
    print(f"  production vs POC: {ratio:.2f}x; target <= 1.30x: ", end="")
    print("met" if ratio <= 1.3 else f"MISSED by {ratio - 1.3:.2f}")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: float(r["seconds"]))[len(runs) // 2]
