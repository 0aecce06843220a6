"""Who a peer is (admit), revocation without a restart, and signatures.

Certificates come from real kits made by `fl_core.provision`; a second
project gives certificates of another CA.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_core.pki.identity import admin_cell_prefix
from fl_core.provision import Participant, provision
from fl_core.provision.ca import CertificateAuthority
from fl_core.spec.security import AdmissionRefused, Signature, SignatureError
from fl_plugins.security_pki.provider import PkiSecurity

PROJECT = """\
project: net
server: {name: server.example.org, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}, {name: site-2, org: hospital-b}]
admins: [{name: boss@a.org, org: hospital-a, role: project_admin}]
"""


def _make(folder: Path, text: str = PROJECT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "PROJECT.yml").write_text(text)
    provision(folder / "PROJECT.yml", folder / "out")
    return folder / "out" / "net"


@pytest.fixture
def kits(tmp_path: Path) -> Path:
    return _make(tmp_path / "project")


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("rogue"))


def _der(kit: Path) -> bytes:
    pem = (kit / "credentials" / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# --- admit -----------------------------------------------------------------------------


def test_a_site_is_admitted_as_itself_and_its_cells(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    for cell in ("site-1", "site-1.job7", "site-1.job7.trainer"):
        identity = server.admit(_der(kits / "site-1"), cell)
        assert (identity.name, identity.org, identity.role) == ("site-1", "hospital-a", "site")
        assert (
            identity.serial == x509.load_der_x509_certificate(_der(kits / "site-1")).serial_number
        )


def test_a_site_certificate_claiming_another_site_is_refused(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    with pytest.raises(AdmissionRefused) as info:
        server.admit(_der(kits / "site-2"), "site-1")
    assert str(info.value) == (
        "certificate of site-2 (site, org hospital-b) may not be cell 'site-1': "
        "a site certificate grants only site-2 and cells under it"
    )


@pytest.mark.parametrize("cell", ["server", "server.job7", "admin-0000000000000000"])
def test_a_site_certificate_claiming_the_server_or_an_admin_is_refused(
    kits: Path, cell: str
) -> None:
    site = PkiSecurity(kits / "site-1")
    with pytest.raises(
        AdmissionRefused, match=rf"certificate of site-2 .* may not be cell '{cell}'"
    ):
        site.admit(_der(kits / "site-2"), cell)


def test_the_server_certificate_is_admitted_as_server_only(kits: Path) -> None:
    site = PkiSecurity(kits / "site-1")
    assert site.admit(_der(kits / "server.example.org"), "server").role == "server"
    with pytest.raises(AdmissionRefused, match=r"grants only 'server'"):
        site.admit(_der(kits / "server.example.org"), "site-1")


def test_an_admin_certificate_grants_cells_named_after_its_email(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    cell = admin_cell_prefix("boss@a.org") + "-0a1b2c3d"
    admin = server.admit(_der(kits / "boss@a.org"), cell)
    assert (admin.name, admin.org, admin.role) == ("boss@a.org", "hospital-a", "project_admin")
    with pytest.raises(AdmissionRefused, match=r"admin certificate grants only"):
        server.admit(_der(kits / "boss@a.org"), admin_cell_prefix("other@a.org"))
    with pytest.raises(AdmissionRefused, match=r"may not be cell 'site-1'"):
        server.admit(_der(kits / "boss@a.org"), "site-1")


def test_a_link_without_a_certificate_is_refused_saying_why(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    with pytest.raises(AdmissionRefused) as info:
        server.admit(None, "site-1")
    assert "'site-1' presented no certificate (plaintext, or TLS without a client certificate)" in (
        str(info.value)
    )


def test_a_certificate_of_another_ca_or_garbage_is_refused(kits: Path, rogue: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    with pytest.raises(AdmissionRefused, match=r"site-1 .* was not issued by this project's CA"):
        server.admit(_der(rogue / "site-1"), "site-1")
    with pytest.raises(AdmissionRefused, match=r"presented no valid certificate"):
        server.admit(b"\x30\x03junk", "site-1")


def _expired(
    kits: Path, name: str, org: str, role: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = CertificateAuthority.load(kits / "ca")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    issued = ca.issue(Participant(name, org, role), 2, now=past)  # not saved: a test's forgery
    return issued.certificate, issued.key


def test_an_expired_certificate_is_refused(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    certificate, _ = _expired(kits, "site-1", "hospital-a", "site")
    with pytest.raises(AdmissionRefused, match=r"site-1 .* expired on"):
        server.admit(certificate.public_bytes(serialization.Encoding.DER), "site-1")


def test_a_revoked_site_is_refused_without_recreating_the_provider(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    identity = server.admit(_der(kits / "site-2"), "site-2")
    assert not server.revoked(identity)
    provision(kits.parents[1] / "PROJECT.yml", kits.parent, revoke="site-2")
    assert server.revoked(identity)
    with pytest.raises(
        AdmissionRefused, match=r"site-2 \(site, org hospital-b\), claiming 'site-2', was revoked"
    ):
        server.admit(_der(kits / "site-2"), "site-2")
    assert server.admit(_der(kits / "site-1"), "site-1").name == "site-1"


def test_a_crl_not_signed_by_the_ca_is_ignored_and_the_last_good_one_kept(
    kits: Path, rogue: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = PkiSecurity(kits / "server.example.org")
    provision(kits.parents[1] / "PROJECT.yml", kits.parent, revoke="site-2")
    assert server.revoked(server.admit(_der(kits / "site-1"), "site-1")) is False
    with pytest.raises(AdmissionRefused, match=r"was revoked"):
        server.admit(_der(kits / "site-2"), "site-2")
    # Someone who can write the kit replaces the CRL with an (empty) one of another CA.
    crl = kits / "server.example.org" / "crl.pem"
    crl.write_bytes((rogue / "ca" / "crl.pem").read_bytes())
    os.utime(crl, ns=(1, 1))  # a different stamp even on a coarse clock
    with caplog.at_level(logging.WARNING), pytest.raises(AdmissionRefused, match=r"was revoked"):
        server.admit(_der(kits / "site-2"), "site-2")
    assert "not signed by the kit's CA; keeping the last good revocation list (1 revoked)" in (
        caplog.text
    )
    crl.write_text("garbage")
    with caplog.at_level(logging.WARNING), pytest.raises(AdmissionRefused, match=r"was revoked"):
        server.admit(_der(kits / "site-2"), "site-2")
    assert "not a PEM revocation list" in caplog.text


# --- signatures --------------------------------------------------------------------------


def test_a_signature_names_its_signer_and_a_changed_byte_is_refused(kits: Path) -> None:
    admin = PkiSecurity(kits / "boss@a.org")
    site = PkiSecurity(kits / "site-1")
    signature = admin.sign(b"manifest")
    signer = site.verify(b"manifest", signature)
    assert (signer.name, signer.org, signer.role) == ("boss@a.org", "hospital-a", "project_admin")
    with pytest.raises(SignatureError, match=r"does not match the data: it was changed"):
        site.verify(b"manifesT", signature)


def test_an_unsigned_package_is_refused(kits: Path) -> None:
    with pytest.raises(SignatureError, match=r"unsigned"):
        PkiSecurity(kits / "site-1").verify(b"manifest", None)


def test_a_signer_of_another_ca_is_refused(kits: Path, rogue: Path) -> None:
    signature = PkiSecurity(rogue / "boss@a.org").sign(b"manifest")
    with pytest.raises(SignatureError, match=r"was not issued by this project's CA"):
        PkiSecurity(kits / "site-1").verify(b"manifest", signature)


def test_a_certificate_swapped_under_a_signature_is_refused(kits: Path) -> None:
    value = PkiSecurity(kits / "site-2").sign(b"manifest").value
    forged = Signature((kits / "boss@a.org" / "credentials" / "cert.pem").read_bytes(), value)
    with pytest.raises(SignatureError, match=r"boss@a.org .* does not match the data"):
        PkiSecurity(kits / "site-1").verify(b"manifest", forged)


def test_a_revoked_signer_is_refused(kits: Path) -> None:
    site = PkiSecurity(kits / "site-1")
    signature = PkiSecurity(kits / "boss@a.org").sign(b"manifest")
    assert site.verify(b"manifest", signature).name == "boss@a.org"
    provision(kits.parents[1] / "PROJECT.yml", kits.parent, revoke="boss@a.org")
    with pytest.raises(SignatureError, match=r"boss@a.org .* was revoked"):
        site.verify(b"manifest", signature)


def test_an_expired_signer_is_refused(kits: Path) -> None:
    certificate, key = _expired(kits, "boss@a.org", "hospital-a", "project_admin")
    value = key.sign(b"manifest", ec.ECDSA(hashes.SHA256()))
    signature = Signature(certificate.public_bytes(serialization.Encoding.PEM), value)
    with pytest.raises(SignatureError, match=r"boss@a.org .* expired on"):
        PkiSecurity(kits / "site-1").verify(b"manifest", signature)


def test_a_malformed_signer_certificate_is_refused(kits: Path) -> None:
    with pytest.raises(SignatureError, match=r"not a PEM certificate"):
        PkiSecurity(kits / "site-1").verify(b"manifest", Signature(b"nope", b"sig"))


def test_a_revoked_admin_has_no_rights(kits: Path) -> None:
    server = PkiSecurity(kits / "server.example.org")
    boss = server.admit(_der(kits / "boss@a.org"), admin_cell_prefix("boss@a.org"))
    assert server.authorize(boss, "shutdown") == ""
    provision(kits.parents[1] / "PROJECT.yml", kits.parent, revoke="boss@a.org")
    assert "was revoked" in server.authorize(boss, "shutdown")
