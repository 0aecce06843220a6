"""Signed jobs: what an admin signs is what a site runs, or the site refuses it and says why."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from fl_core.provision import provision
from fl_core.roles.protocol.job_package import JobPackageError
from fl_core.roles.protocol.signed_job import MANIFEST, SIGNATURE, SIGNER, sign_job, verify_job
from fl_core.spec.security import Identity, SignatureError
from fl_plugins.security_none.hooks import NoSecurity
from fl_plugins.security_pki.provider import PkiSecurity

PROJECT = """\
project: net
server: {name: server.example.org, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}]
admins:
  - {name: boss@a.org, org: hospital-a, role: project_admin}
"""


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("signed")
    (folder / "PROJECT.yml").write_text(PROJECT)
    provision(folder / "PROJECT.yml", folder / "out")
    return folder / "out" / "net"


@pytest.fixture(scope="module")
def other_ca_admin(tmp_path_factory: pytest.TempPathFactory) -> PkiSecurity:
    folder = tmp_path_factory.mktemp("other")
    (folder / "PROJECT.yml").write_text(PROJECT)
    provision(folder / "PROJECT.yml", folder / "out")
    return PkiSecurity(folder / "out" / "net" / "boss@a.org")


def job(folder: Path) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "job.yaml").write_text("name: signed\n")
    (folder / "train.py").write_text("print('train')\n")
    (folder / "lib" / "util.py").write_text("X = 1\n")
    return folder


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_a_site_verifies_what_the_admin_signed_and_learns_who_signed(
    kits: Path, tmp_path: Path
) -> None:
    admin, site = PkiSecurity(kits / "boss@a.org"), PkiSecurity(kits / "site-1")
    signed = job(tmp_path / "job")
    headers = sign_job(admin, signed, "signed")
    signer, forwarded = verify_job(site, headers, copy(signed, tmp_path / "at-site"), "signed")
    assert signer == Identity("boss@a.org", "hospital-a", "project_admin", signer.serial)
    assert forwarded == headers  # passed on unchanged, so the next site checks the same


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: (d / "train.py").write_text("import os\n"), "train.py was changed"),
        (lambda d: (d / "lib" / "util.py").unlink(), "lib/util.py was signed but is missing"),
        (lambda d: (d / "evil.py").write_text("x\n"), "evil.py was added after"),
    ],
)
def test_a_package_changed_after_signing_is_refused_naming_the_file(
    kits: Path, tmp_path: Path, change: object, problem: str
) -> None:
    admin, site = PkiSecurity(kits / "boss@a.org"), PkiSecurity(kits / "site-1")
    signed = job(tmp_path / "job")
    headers = sign_job(admin, signed, "signed")
    received = copy(signed, tmp_path / "at-site")
    change(received)  # type: ignore[operator]
    with pytest.raises(JobPackageError, match=problem):
        verify_job(site, headers, received, "signed")


def test_a_renamed_job_is_refused(kits: Path, tmp_path: Path) -> None:
    admin, site = PkiSecurity(kits / "boss@a.org"), PkiSecurity(kits / "site-1")
    signed = job(tmp_path / "job")
    headers = sign_job(admin, signed, "signed")
    with pytest.raises(JobPackageError, match=r"job\.yaml names 'other'"):
        verify_job(site, headers, signed, "other")


def test_a_changed_manifest_breaks_the_signature(kits: Path, tmp_path: Path) -> None:
    admin, site = PkiSecurity(kits / "boss@a.org"), PkiSecurity(kits / "site-1")
    signed = job(tmp_path / "job")
    headers = sign_job(admin, signed, "signed")
    manifest = base64.b64decode(headers[MANIFEST]).replace(b'"signed"', b'"signeD"', 1)
    forged = {**headers, MANIFEST: base64.b64encode(manifest).decode()}
    with pytest.raises(SignatureError):
        verify_job(site, forged, signed, "signed")


def test_a_signer_from_another_ca_is_refused(
    kits: Path, tmp_path: Path, other_ca_admin: PkiSecurity
) -> None:
    site = PkiSecurity(kits / "site-1")
    signed = job(tmp_path / "job")
    headers = sign_job(other_ca_admin, signed, "signed")
    with pytest.raises(SignatureError):
        verify_job(site, headers, signed, "signed")


def test_an_unsigned_job_is_refused_in_production_and_taken_in_a_poc(
    kits: Path, tmp_path: Path
) -> None:
    signed = job(tmp_path / "job")
    with pytest.raises(SignatureError):
        verify_job(PkiSecurity(kits / "site-1"), {}, signed, "signed")
    assert verify_job(NoSecurity(), {}, signed, "signed") == (None, {})
    assert sign_job(NoSecurity(), signed, "signed") == {}


@pytest.mark.parametrize("header", [MANIFEST, SIGNER, SIGNATURE])
def test_malformed_or_oversized_headers_are_refused_before_any_work(
    kits: Path, tmp_path: Path, header: str
) -> None:
    admin, site = PkiSecurity(kits / "boss@a.org"), PkiSecurity(kits / "site-1")
    signed = job(tmp_path / "job")
    headers = sign_job(admin, signed, "signed")
    with pytest.raises(SignatureError, match="not base64"):
        verify_job(site, {**headers, header: "%%%"}, signed, "signed")
    with pytest.raises(SignatureError, match="over"):
        verify_job(site, {**headers, header: "A" * 200_000}, signed, "signed")
