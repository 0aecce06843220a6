"""`fl-core poc prepare --secure`: a provisioned project on this machine, run from its kits."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fl_core.config.kit import load_kit
from fl_plugins.security_pki.provider import PkiSecurity
from tests.e2e.test_poc_cli import assert_exact, hello_job, run_cli, wait_gone

pytestmark = pytest.mark.e2e


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def final(ws: Path, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 180
    while True:
        record: dict[str, object] = json.loads(
            ok(run_cli("job", "status", job_id, "--workspace", str(ws)))
        )
        if record["state"] in ("finished", "failed", "aborted") or time.monotonic() > deadline:
            return record
        time.sleep(0.5)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_a_secure_poc_runs_hello_numpy_exact_from_its_kits_and_stops_clean(
    tmp_path: Path, transport: str
) -> None:
    ws = tmp_path / "poc"
    prepared = ok(
        run_cli("poc", "prepare", "--secure", "--clients", "2", "--transport", transport,
                "--workspace", str(ws))
    )  # fmt: skip
    assert "secure POC" in prepared
    kits = ws / "kits" / "poc"
    # Provisioned as production is: a CA, a kit per participant, each with its certificate.
    assert load_kit(kits / "site-2").role == "site"
    admin = PkiSecurity(kits / "admin@poc.local").identity()
    assert (admin.name, admin.role) == ("admin@poc.local", "project_admin")
    server = yaml.safe_load((kits / "localhost" / "federation.yaml").read_text())
    assert server["mode"] == "production" and server["security"]["name"] == "pki"
    assert server["server"]["listen"].startswith(f"{transport}://127.0.0.1:")  # not 0.0.0.0
    try:
        started = ok(run_cli("poc", "start", "--workspace", str(ws)))
        assert "site-2: client parent joined" in started
        status = ok(run_cli("poc", "status", "--workspace", str(ws)))
        assert "sites connected: site-1, site-2" in status and "certificate: expires" in status
        job_id = ok(
            run_cli("job", "submit", str(hello_job(tmp_path / "job", 2)), "--workspace", str(ws))
        ).strip()
        record = final(ws, job_id)
        assert record["state"] == "finished", record
        out = tmp_path / "result"
        ok(run_cli("job", "download", job_id, "--workspace", str(ws), "--output", str(out)))
        assert_exact(out, rounds=2, clients=2)
        # The job went through production's checks: signed by the admin's certificate.
        audit = (kits / "localhost" / "server" / "audit.jsonl").read_text()
        assert "admin@poc.local" in audit and '"submit_job"' in audit
        deployed = (kits / "site-1" / "site-1" / "audit.jsonl").read_text()
        assert re.search(r'"who": "admin@poc.local[^"]*", "action": "deploy"', deployed), deployed
    finally:
        stopped = run_cli("poc", "stop", "--workspace", str(ws))
    assert "is stopped" in ok(stopped) and "outlived" not in stopped.stdout, stopped.stdout
    assert wait_gone(ws) == []
    after = run_cli("poc", "status", "--workspace", str(ws))
    assert after.returncode == 1 and "state: stopped" in after.stdout


def test_a_site_kit_without_its_key_does_not_start_and_names_the_file(tmp_path: Path) -> None:
    ws = tmp_path / "poc"
    ok(run_cli("poc", "prepare", "--secure", "--clients", "2", "--workspace", str(ws)))
    key = ws / "kits" / "poc" / "site-2" / "credentials" / "key.pem"
    key.unlink()
    started = run_cli("poc", "start", "--workspace", str(ws), "--timeout", "30")
    assert started.returncode == 1, started.stdout
    assert "site-2 did not start" in started.stderr, started.stderr
    assert str(key) in started.stderr  # the credential error names the file
    assert wait_gone(ws) == []  # what had started (server, site-1) was stopped


def test_prepare_secure_refuses_a_running_poc_and_plain_prepare_stays_plain(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "poc"
    ok(run_cli("poc", "prepare", "--secure", "--clients", "1", "--workspace", str(ws)))
    try:
        ok(run_cli("poc", "start", "--workspace", str(ws)))
        again = run_cli("poc", "prepare", "--force", "--workspace", str(ws))
        assert again.returncode == 1 and "still running" in again.stderr, again.stderr
    finally:
        ok(run_cli("poc", "stop", "--workspace", str(ws)))
    ok(run_cli("poc", "prepare", "--force", "--workspace", str(ws)))
    assert (ws / "federation.yaml").is_file() and not (ws / "kits").exists()


def test_run_poc_with_secure_runs_the_job_from_fresh_kits_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "result"
    job = hello_job(tmp_path / "job", 2)
    proc = run_cli(
        "run",
        "--mode",
        "poc",
        str(job),
        "--secure",
        "--transport",
        "grpc",
        "--workspace",
        str(out),
        "-q",
    )
    assert "finished in" in ok(proc)
    assert_exact(out, rounds=2, clients=2)
    root = re.search(r"\(workspace (\S+)\)", proc.stdout)
    assert root and not Path(root.group(1)).exists()  # the temporary project is gone
    assert wait_gone(Path(root.group(1))) == []
