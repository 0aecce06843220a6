"""`fl-core start|stop|status KIT` on one machine (the namespaced runs are in tests/e2e)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fl_core(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fl_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def provision(tmp_path: Path, valid_days: int = 365) -> Path:
    project = tmp_path / "project.yml"
    project.write_text(
        "project: local\n"
        f"valid_days: {valid_days}\n"
        f"server: {{name: localhost, port: {free_port()}, org: ops}}\n"
        "sites: [{name: site-1, org: a}, {name: site-2, org: b}]\n"
        "admins: [{name: admin@a.org, org: a, role: project_admin}]\n"
    )
    ok(fl_core("provision", str(project), "--out", str(tmp_path / "kits")))
    return tmp_path / "kits" / "local"


def processes_naming(*roots: Path) -> list[str]:
    needles = [str(root).encode() for root in roots]
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(needle in cmdline for needle in needles):
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.fixture
def kits(tmp_path: Path) -> Path:
    return provision(tmp_path)


def test_kits_start_run_a_job_and_stop_without_leaving_a_process(
    kits: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "elsewhere"  # the server's state outside its kit
    try:
        out = ok(fl_core("start", str(kits / "localhost"), "--workspace", str(workspace)))
        assert "server parent of local" in out
        assert (workspace / "server" / "pid").is_file()
        assert not (kits / "localhost" / "server").exists()
        for site in ("site-1", "site-2"):
            assert "joined" in ok(fl_core("start", str(kits / site)))
        again = fl_core("start", str(kits / "site-1"))
        assert again.returncode == 1 and "already running" in again.stderr
        job = tmp_path / "job"
        shutil.copytree(HELLO, job)
        (job / "job.yaml").write_text(
            (HELLO / "job.yaml").read_text().replace("rounds: 5", "rounds: 1")
        )
        admin = ["--kit", str(kits / "admin@a.org")]
        job_id = ok(fl_core("job", "submit", str(job), *admin)).strip()
        deadline = time.monotonic() + 120
        while True:
            record = json.loads(ok(fl_core("job", "status", job_id, *admin)))
            if record["state"] in ("finished", "failed", "aborted") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert record["state"] == "finished", record
        status = ok(fl_core("status", str(kits / "localhost"), "--workspace", str(workspace)))
        assert "state: running" in status and "site-1, site-2" in status
        assert "certificate: expires in 36" in status and "WARNING" not in status
        started = ok(fl_core("status", str(kits / "site-1")))
        assert "(connected)" in started
        audit = (workspace / "server" / "audit.jsonl").read_text()
        assert '"submit_job"' in audit and "admin@a.org" in audit
    finally:
        stops = [fl_core("stop", str(kits / site)) for site in ("site-1", "site-2")]
        stops.append(fl_core("stop", str(kits / "localhost"), "--workspace", str(workspace)))
    for proc in stops:
        assert "stopped" in ok(proc) and "outlived" not in proc.stdout, proc.stdout
    assert processes_naming(kits, workspace) == []
    stopped = fl_core("status", str(kits / "site-1"))
    assert stopped.returncode == 3 and "state: stopped" in stopped.stdout


def test_an_admin_kit_starts_nothing(kits: Path) -> None:
    proc = fl_core("start", str(kits / "admin@a.org"))
    assert proc.returncode == 2
    assert "admin's kit" in proc.stderr and "--kit" in proc.stderr


def test_a_certificate_near_its_end_is_flagged(tmp_path: Path) -> None:
    kits = provision(tmp_path, valid_days=10)
    status = fl_core("status", str(kits / "site-1"))
    assert "certificate: expires in 9 days  WARNING: renew it soon" in status.stdout, status.stdout


def test_a_kit_missing_its_key_does_not_start_and_names_the_file(kits: Path) -> None:
    key = kits / "site-1" / "credentials" / "key.pem"
    key.unlink()
    proc = fl_core("start", str(kits / "site-1"), timeout=60)
    assert proc.returncode == 1
    assert "key.pem" in proc.stderr, proc.stderr
    assert processes_naming(kits) == []


def test_a_folder_that_is_no_kit_is_refused(tmp_path: Path) -> None:
    proc = fl_core("start", str(tmp_path))
    assert proc.returncode == 1
    assert "not a startup kit" in proc.stderr
