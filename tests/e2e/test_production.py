"""Production across real hosts: a server, sites and an admin, each in its own network namespace.

The project is provisioned with `fl-core provision`; every participant is
started from its kit with `fl-core start` inside its own namespace, and finds
the server by host name (`/etc/netns/<ns>/hosts`). One federation serves the
whole module; the tests run in file order, and the last one revokes a site.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fl_core.model import load_params
from tests.e2e.conftest import require_netns
from tests.e2e.netns import Hosts

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"
SERVER = "server.example.org"
PORT = 8002
PROJECT = """\
project: hospital-net
transport: grpc
server: {name: server.example.org, host: server.example.org, port: 8002, org: nvidia}
sites:
  - {name: site-1, org: hospital-a}
  - {name: site-2, org: hospital-b}
admins:
  - {name: admin@a.org, org: hospital-a, role: project_admin}
  - {name: member@b.org, org: hospital-b, role: member}
"""
SITE_3 = "  - {name: site-3, org: hospital-c}\n"


@dataclass
class Federation:
    hosts: Hosts
    project_file: Path
    out: Path
    tmp: Path

    def kit(self, name: str) -> Path:
        return self.out / "hospital-net" / name

    def cli(
        self, host: str, *args: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.hosts.run(host, [sys.executable, "-m", "fl_core.cli", *args], timeout=timeout)

    def admin(self, *args: str, who: str = "admin@a.org") -> subprocess.CompletedProcess[str]:
        return self.cli("admin", "job", *args, "--kit", str(self.kit(who)))

    def audit(self, name: str) -> list[dict[str, str]]:
        folder = "server" if name == SERVER else name
        path = self.kit(name) / folder / "audit.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def hello_job(folder: Path, rounds: int, min_clients: int = 2) -> Path:
    folder.mkdir(parents=True)
    for name in ("train.py", "initial_model.npz"):
        shutil.copy(HELLO / name, folder / name)
    text = (HELLO / "job.yaml").read_text().replace("rounds: 5", f"rounds: {rounds}")
    text = text.replace("min_clients: 2", f"min_clients: {min_clients}")
    (folder / "job.yaml").write_text(text)
    return folder


def wait_for(what: str, check: Callable[[], object], timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)


def final_record(fed: Federation, job_id: str, who: str = "admin@a.org") -> dict[str, object]:
    def ended() -> dict[str, object] | None:
        record: dict[str, object] = json.loads(ok(fed.admin("status", job_id, who=who)))
        return record if record["state"] in ("finished", "failed", "aborted") else None

    found = wait_for(f"job {job_id} to end", ended, timeout=180.0)
    assert isinstance(found, dict)
    return found


def assert_exact(workspace: Path, rounds: int, clients: int) -> None:
    final = load_params(workspace / "final_model.npz")
    initial = load_params(HELLO / "initial_model.npz")
    expected = rounds * (clients + 1) / 2  # site k adds k; equal weights
    for name, array in final.items():
        assert np.array_equal(array, initial[name] + expected), name


def start(fed: Federation, host: str, kit: str) -> None:
    ok(fed.cli(host, "start", str(fed.kit(kit))))


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    require_netns()
    tmp = tmp_path_factory.mktemp("production")
    project_file = tmp / "project.yml"
    project_file.write_text(PROJECT)
    out = tmp / "out"
    hosts = Hosts(
        {
            SERVER: "server",
            "site-1": "site-1",
            "site-2": "site-2",
            "site-3": "site-3",
            "admin": "admin",
        }
    )
    federation = Federation(hosts, project_file, out, tmp)
    try:
        ok(federation.cli("admin", "provision", str(project_file), "--out", str(out)))
        start(federation, SERVER, SERVER)
        start(federation, "site-1", "site-1")
        start(federation, "site-2", "site-2")
        yield federation
    finally:
        for name, host in (
            (SERVER, SERVER),
            ("site-1", "site-1"),
            ("site-2", "site-2"),
            ("site-3", "site-3"),
        ):
            if federation.kit(name).is_dir():
                federation.cli(host, "stop", str(federation.kit(name)))
        left = hosts.close()
        assert left == [], f"processes outlived `fl-core stop`: {left}"


def test_hello_numpy_from_kits_finishes_exact(fed: Federation) -> None:
    job = hello_job(fed.tmp / "hello", rounds=3)
    job_id = ok(fed.admin("submit", str(job))).strip()
    record = final_record(fed, job_id)
    assert record["state"] == "finished", record
    assert record["submitter"] == "admin@a.org"
    out = fed.tmp / "hello-result"
    ok(fed.admin("download", job_id, "--output", str(out)))
    assert_exact(out, rounds=3, clients=2)
    status = ok(fed.cli(SERVER, "status", str(fed.kit(SERVER))))
    assert "site-1" in status and "site-2" in status and "certificate: expires in" in status
    submitted = [e for e in fed.audit(SERVER) if e["action"] == "submit_job"]
    assert submitted and submitted[-1]["result"] == "submitted"
    assert any(e["action"] == "deploy" and e["result"] == "accepted" for e in fed.audit("site-1"))


def test_an_admin_whose_role_lacks_the_right_is_refused_and_audited(fed: Federation) -> None:
    job = hello_job(fed.tmp / "member-job", rounds=1)
    proc = fed.admin("submit", str(job), who="member@b.org")
    assert proc.returncode == 1
    assert "submit_job" in proc.stderr and "member" in proc.stderr, proc.stderr
    refused = [e for e in fed.audit(SERVER) if e["who"].startswith("member@b.org")]
    assert refused and refused[-1]["result"].startswith("refused"), refused
    # What a member may do, it may: see the list.
    ok(fed.admin("list", who="member@b.org"))


CLAIM = """\
import sys
from fl_core.cell.cell import Cell
from fl_core.config.federation import load_federation
from fl_core.containers.production import federation_container

fed = load_federation(sys.argv[1])
# The site's own transport, with its own certificate: only the claimed name lies.
transport = federation_container(fed, identity="site-2").transport()
cell = Cell(sys.argv[2], transport)
try:
    cell.connect_parent(fed.server.url, 10.0, reconnect=False)
except Exception as exc:
    print("REFUSED", exc)
else:
    print("ADMITTED")
cell.close()
transport.close()
"""


@pytest.mark.parametrize("claimed", ["site-1", "server", "server.job1"])
def test_a_site_certificate_cannot_claim_another_site_or_the_server(
    fed: Federation, claimed: str
) -> None:
    kit = fed.kit("site-2")
    argv = [sys.executable, "-c", CLAIM, str(kit / "federation.yaml"), claimed]
    claim = fed.hosts.run("site-2", argv, timeout=60)
    assert "REFUSED" in claim.stdout, (claim.stdout, claim.stderr)
    assert f"may not be cell '{claimed}'" in claim.stdout, claim.stdout
    refused = [e for e in fed.audit(SERVER) if e["who"] == claimed]
    assert refused and refused[-1]["result"].startswith("refused"), refused
    assert "site-2" in refused[-1]["result"]


def test_plaintext_and_a_certificate_of_another_ca_are_refused(fed: Federation) -> None:
    other = fed.tmp / "other-project.yml"
    other.write_text(PROJECT.replace("project: hospital-net", "project: hospital-net"))
    other_out = fed.tmp / "other-ca"
    ok(fed.cli("admin", "provision", str(other), "--out", str(other_out)))
    stranger = other_out / "hospital-net" / "admin@a.org"
    proc = fed.cli("admin", "job", "list", "--kit", str(stranger))
    assert proc.returncode == 1, proc.stdout
    assert "server" in proc.stderr.lower(), proc.stderr
    plain = (
        "from fl_core.cell.cell import Cell\n"
        "from fl_core.plugins import make_plugin_manager\n"
        "transport = make_plugin_manager().registry().create('transport', 'grpc', {})\n"
        "cell = Cell('site-1', transport)\n"
        f"try:\n    cell.connect_parent('grpc://{SERVER}:{PORT}', 5.0, reconnect=False)\n"
        "except Exception as exc:\n    print('REFUSED', type(exc).__name__)\n"
        "else:\n    print('ADMITTED')\n"
        "cell.close(); transport.close()\n"
    )
    claim = fed.hosts.run("site-1", [sys.executable, "-c", plain], timeout=60)
    assert "REFUSED" in claim.stdout, (claim.stdout, claim.stderr)


def test_a_job_the_sites_policy_refuses_says_which_site_refused(fed: Federation) -> None:
    policy = fed.kit("site-2") / "site_policy.yaml"
    saved = policy.read_text()
    policy.write_text("run_job: [{org: nobody-at-all}]\n")
    try:
        job_id = ok(fed.admin("submit", str(hello_job(fed.tmp / "refused-job", rounds=1)))).strip()
        record = final_record(fed, job_id)
    finally:
        policy.write_text(saved)
    assert record["state"] == "failed", record
    assert "site-2 refused job" in str(record["reason"]), record
    assert any(e["action"] == "deploy" and "refused" in e["result"] for e in fed.audit("site-2"))


def test_an_added_site_joins_and_sites_refuse_a_package_the_server_changed(fed: Federation) -> None:
    # A job for three sites waits: only two are up.
    job_id = ok(
        fed.admin("submit", str(hello_job(fed.tmp / "three", rounds=1, min_clients=3)))
    ).strip()
    # The server is compromised: it swaps the training script after the admin signed the job.
    package = fed.kit(SERVER) / "server" / "jobs" / job_id / "package.zip"
    with zipfile.ZipFile(package) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["train.py"] += b"\nimport os  # something the admin never signed\n"
    with zipfile.ZipFile(package, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    # site-3 is added to the running project: a new kit from the same CA, no restart.
    fed.project_file.write_text(fed.project_file.read_text().replace("admins:", SITE_3 + "admins:"))
    before = {p.name: p.stat().st_mtime_ns for p in (fed.kit("site-1") / "credentials").iterdir()}
    ok(
        fed.cli(
            "admin", "provision", str(fed.project_file), "--out", str(fed.out), "--add", "site-3"
        )
    )
    after = {p.name: p.stat().st_mtime_ns for p in (fed.kit("site-1") / "credentials").iterdir()}
    assert before == after, "--add touched another kit"
    start(fed, "site-3", "site-3")
    record = final_record(fed, job_id)
    assert record["state"] == "failed", record
    assert "train.py was changed after the job was signed" in str(record["reason"]), record
    # The next job takes site-3 in.
    job_id = ok(
        fed.admin("submit", str(hello_job(fed.tmp / "three-ok", rounds=2, min_clients=3)))
    ).strip()
    record = final_record(fed, job_id)
    assert record["state"] == "finished", record
    assert sorted(record["sites"]) == ["site-1", "site-2", "site-3"]  # type: ignore[arg-type]
    out = fed.tmp / "three-result"
    ok(fed.admin("download", job_id, "--output", str(out)))
    assert_exact(out, rounds=2, clients=3)


def test_a_revoked_site_is_cut_off_without_a_restart(fed: Federation) -> None:
    ok(
        fed.cli(
            "admin", "provision", str(fed.project_file), "--out", str(fed.out), "--revoke", "site-2"
        )
    )

    def gone() -> bool:
        status = json.loads((fed.kit(SERVER) / "server" / "status.json").read_text())
        return "site-2" not in status["sites"]

    wait_for("the server to drop revoked site-2", gone)
    wait_for(
        "the server to refuse site-2 coming back",
        lambda: any(
            e["who"] == "site-2" and "revoked" in e["result"] and e["result"].startswith("refused")
            for e in fed.audit(SERVER)
        ),
    )
    assert os.path.exists(fed.kit(SERVER) / "crl.pem")
