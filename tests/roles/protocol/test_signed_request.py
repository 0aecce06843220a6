"""Signed admin requests: a site learns who asked, or refuses saying which check failed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from fl_core.provision import provision
from fl_core.roles.protocol.signed_request import (
    MAX_AGE,
    REQUEST,
    SIGNATURE,
    SIGNER,
    ReplayGuard,
    is_signed,
    sign_request,
    signed_part,
    verify_request,
)
from fl_core.spec.security import SignatureError
from fl_plugins.security_none.hooks import NoSecurity
from fl_plugins.security_pki.provider import PkiSecurity

PROJECT = """\
project: net
server: {name: server.example.org, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}]
admins:
  - {name: boss@a.org, org: hospital-a, role: project_admin}
"""


def kits(folder: Path) -> Path:
    (folder / "PROJECT.yml").write_text(PROJECT)
    provision(folder / "PROJECT.yml", folder / "out")
    return folder / "out" / "net"


@pytest.fixture(scope="module")
def admin_and_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[PkiSecurity, PkiSecurity]:
    root = kits(tmp_path_factory.mktemp("request"))
    return PkiSecurity(root / "boss@a.org"), PkiSecurity(root / "site-1")


def test_a_site_learns_which_admin_signed_the_request(
    admin_and_site: tuple[PkiSecurity, PkiSecurity],
) -> None:
    admin, site = admin_and_site
    headers = sign_request(admin, "abort_job", "job1")
    assert is_signed(headers) and signed_part({**headers, "other": "x"}) == headers
    signer = verify_request(site, headers, "abort_job", "job1", replays=ReplayGuard())
    assert (signer.name, signer.org, signer.role) == ("boss@a.org", "hospital-a", "project_admin")


def test_a_request_for_another_job_or_action_is_refused(
    admin_and_site: tuple[PkiSecurity, PkiSecurity],
) -> None:
    admin, site = admin_and_site
    headers = sign_request(admin, "abort_job", "job1")
    with pytest.raises(SignatureError, match="signed abort_job of job job1, not abort_job of job"):
        verify_request(site, headers, "abort_job", "job2")
    with pytest.raises(SignatureError, match="not read_results of job job1"):
        verify_request(site, headers, "read_results", "job1")


def test_a_changed_request_breaks_the_signature(
    admin_and_site: tuple[PkiSecurity, PkiSecurity],
) -> None:
    admin, site = admin_and_site
    headers = sign_request(admin, "abort_job", "job1")
    data = json.loads(base64.b64decode(headers[REQUEST]))
    data["job_id"] = "job2"  # a server reusing the admin's signature for another job
    forged = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(SignatureError, match="does not match the data"):
        verify_request(
            site, {**headers, REQUEST: base64.b64encode(forged).decode()}, "abort_job", "job2"
        )


def test_an_old_or_replayed_request_is_refused(
    admin_and_site: tuple[PkiSecurity, PkiSecurity],
) -> None:
    admin, site = admin_and_site
    headers = sign_request(admin, "abort_job", "job1")
    later = time.time() + MAX_AGE + 60
    with pytest.raises(SignatureError, match="from this participant's clock"):
        verify_request(site, headers, "abort_job", "job1", now=later)
    replays = ReplayGuard()
    verify_request(site, headers, "abort_job", "job1", replays=replays)
    with pytest.raises(SignatureError, match="used before"):
        verify_request(site, headers, "abort_job", "job1", replays=replays)


def test_a_signer_of_another_ca_or_no_signature_is_refused(
    admin_and_site: tuple[PkiSecurity, PkiSecurity], tmp_path: Path
) -> None:
    _, site = admin_and_site
    stranger = PkiSecurity(kits(tmp_path) / "boss@a.org")  # same names, another CA
    with pytest.raises(SignatureError, match="not issued by this project's CA"):
        verify_request(site, sign_request(stranger, "abort_job", "job1"), "abort_job", "job1")
    headers = sign_request(stranger, "abort_job", "job1")
    for missing in (REQUEST, SIGNER, SIGNATURE):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(SignatureError, match=f"no {missing} header"):
            verify_request(site, partial, "abort_job", "job1")


def test_without_certificates_nothing_is_signed() -> None:
    assert sign_request(NoSecurity(), "abort_job", "job1") == {}
    assert not is_signed({})
