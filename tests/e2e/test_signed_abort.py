"""An admin's abort (and a site log request) carries the admin's signature; each site decides.

Real kits (`poc prepare --secure` provisions them with `fl_core.provision`),
real processes started from them, mutual TLS on loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_core.audit import AuditLog
from fl_core.cli import poc_secure
from fl_core.containers.poc import admin_client
from fl_core.roles.admin.client import AdminRequestError
from fl_core.roles.protocol.parent import AdminTopic, Field
from fl_core.testing import write_job
from tests.e2e.test_poc_cli import processes_under, run_cli, wait_gone

pytestmark = pytest.mark.e2e

# Busy in its first task for far longer than any test: its client job stays alive
# (waiting for its training process) whatever happens to the server job meanwhile.
SLOW = (
    "import time\nimport fl_core.client as flare\nflare.init()\nflare.receive()\ntime.sleep(600)\n"
)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def running(tmp_path: Path) -> Iterator[poc_secure.SecurePoc]:
    ws = tmp_path / "poc"
    ok(run_cli("poc", "prepare", "--secure", "--clients", "2", "--workspace", str(ws)))
    poc = poc_secure.load_secure(ws)
    policy = poc.kits / "site-2" / "site_policy.yaml"
    text, count = re.subn(r"(?m)^(abort_job|read_results): .*$", r"\1: none", policy.read_text())
    assert count == 2
    policy.write_text(text)  # site-2 lets no admin abort its part or read its logs
    try:
        ok(run_cli("poc", "start", "--workspace", str(ws)))
        yield poc
    finally:
        stopped = run_cli("poc", "stop", "--workspace", str(ws))
        assert "outlived" not in stopped.stdout, stopped.stdout
        assert wait_gone(ws) == []


def client_job(poc: poc_secure.SecurePoc, site: str, job_id: str) -> list[int]:
    """Pids of `site`'s client job of `job_id` (its command line names the site's job folder).

    Not its supervisor, whose command line names the client job too: a snapshot
    taken before the supervisor has started the client job would hold it alone.
    """
    folder = poc.kit(site).workspace / "jobs" / job_id / "job"
    return [
        pid
        for pid, cmd in processes_under(folder)
        if " client-job " in cmd and "supervise.py" not in cmd
    ]


def submit_and_wait_running(poc: poc_secure.SecurePoc, tmp_path: Path) -> str:
    job = write_job(tmp_path / "job", script=SLOW, rounds=1, min_clients=2)
    job_id = ok(run_cli("job", "submit", str(job), "--workspace", str(poc.root))).strip()
    deadline = time.monotonic() + 120
    while not all(client_job(poc, site, job_id) for site in poc.sites):
        assert time.monotonic() < deadline, "the client jobs did not start"
        time.sleep(0.2)
    return job_id


def test_each_site_decides_the_admins_signed_abort_of_its_part(
    running: poc_secure.SecurePoc, tmp_path: Path
) -> None:
    poc = running
    job_id = submit_and_wait_running(poc, tmp_path)
    site_2_job = client_job(poc, "site-2", job_id)

    aborted = run_cli("job", "abort", job_id, "--workspace", str(poc.root))
    assert aborted.returncode == 1, aborted.stdout + aborted.stderr
    assert f"{job_id}: aborted" in aborted.stdout
    refusal = f"site-2 refused to abort job {job_id}: "
    assert refusal in aborted.stdout and "abort_job" in aborted.stdout, aborted.stdout
    assert "site-1 refused" not in aborted.stdout

    # site-1's policy lets a project_admin abort: its part is gone once the abort returns.
    assert client_job(poc, "site-1", job_id) == []
    # site-2's part runs on: its own policy refused, whatever the server decided.
    assert client_job(poc, "site-2", job_id) == site_2_job

    def aborts(site: str) -> list[dict[str, str]]:
        log = AuditLog(poc.kit(site).workspace / "audit.jsonl")
        return [e for e in log.entries() if e["action"] == "abort_job"]

    (site_1,) = aborts("site-1")
    assert site_1["who"].startswith("admin@poc.local") and site_1["result"] == "done"
    (site_2,) = aborts("site-2")
    assert site_2["who"].startswith("admin@poc.local"), site_2
    assert site_2["result"].startswith("refused: ") and "site_policy.yaml" in site_2["result"]
    server = AuditLog(poc.kit("localhost").workspace / "audit.jsonl").entries()
    assert any(e["action"] == "abort_job" and refusal in e["result"] for e in server), (
        server
    )  # the server's audit keeps what the site said


def test_the_server_refuses_an_abort_without_the_admins_signature(
    running: poc_secure.SecurePoc, tmp_path: Path
) -> None:
    poc = running
    job_id = submit_and_wait_running(poc, tmp_path)
    with admin_client(poc.admin_federation()) as admin:
        # What an admin client that does not sign would send (or a relay that stripped it).
        with pytest.raises(AdminRequestError, match="carries no signature of the admin"):
            admin._json(AdminTopic.ABORT, {Field.JOB_ID: job_id})
        assert admin.status(job_id)["state"] == "running"
        assert all(client_job(poc, site, job_id) for site in poc.sites)
        record = admin.abort(job_id)  # signed: site-1 stops, site-2 refuses
    assert record["state"] == "aborted"
    assert [line.split(":")[0] for line in record["refused"]] == [
        f"site-2 refused to abort job {job_id}"
    ]
    audit = AuditLog(poc.kit("localhost").workspace / "audit.jsonl").entries()
    assert any("carries no signature" in e["result"] for e in audit), json.dumps(audit)


def test_a_sites_log_is_shown_by_the_site_itself_if_its_policy_allows(
    running: poc_secure.SecurePoc, tmp_path: Path
) -> None:
    poc = running
    job_id = submit_and_wait_running(poc, tmp_path)
    ws = str(poc.root)
    # The site's log itself (the server does not read it from the site's disk).
    shown = ok(run_cli("job", "logs", job_id, "--site", "site-1", "--workspace", ws))
    on_disk = (poc.kit("site-1").workspace / "jobs" / job_id / "log.txt").read_text()
    assert shown and shown in on_disk  # the log may grow after it was shown
    refused = run_cli("job", "logs", job_id, "--site", "site-2", "--workspace", ws)
    assert refused.returncode == 1
    assert f"site-2 refused to show its log of job {job_id}: " in refused.stderr, refused.stderr
    assert "read_results" in refused.stderr
    (entry,) = [
        e
        for e in AuditLog(poc.kit("site-2").workspace / "audit.jsonl").entries()
        if e["action"] == "read_results"
    ]
    assert entry["who"].startswith("admin@poc.local") and entry["result"].startswith("refused")
    unknown = run_cli("job", "logs", job_id, "--site", "site-9", "--workspace", ws)
    assert unknown.returncode == 1 and "ran on site-1, site-2" in unknown.stderr
