"""Re-provisioning: --add touches no other kit, --revoke signs and copies a CRL, --new-ca."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fl_core.credentials import CredentialError
from fl_core.pki.kit import read_kit_credentials
from fl_core.provision import ProvisionError, provision

PROJECT = """\
project: net
transport: tcp
server: {name: server.example.org, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}, {name: site-2, org: hospital-b}]
admins: [{name: admin@hospital-a.org, org: hospital-a, role: project_admin}]
"""
SITE_3 = "  - {name: site-3, org: hospital-c}\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "PROJECT.yml"
    path.write_text(text)
    return path


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime under `root`."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _with_site_3() -> str:
    return PROJECT.replace(
        "sites: [{name: site-1, org: hospital-a}, {name: site-2, org: hospital-b}]",
        "sites:\n  - {name: site-1, org: hospital-a}\n  - {name: site-2, org: hospital-b}\n"
        + SITE_3,
    )


@pytest.fixture
def provisioned(tmp_path: Path) -> Path:
    provision(_write(tmp_path, PROJECT), tmp_path / "out")
    return tmp_path / "out" / "net"


def _state(root: Path) -> list[dict[str, object]]:
    issued = yaml.safe_load((root / "ca" / "state.yaml").read_text())["issued"]
    assert isinstance(issued, list)
    return issued


def _crl(root: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((root / "ca" / "crl.pem").read_bytes())


def _ca(root: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((root / "ca" / "ca.pem").read_bytes())


def test_state_records_every_certificate_issued(provisioned: Path) -> None:
    state = _state(provisioned)
    assert [(e["name"], e["role"], e["org"], e["revoked"]) for e in state] == [
        ("server.example.org", "server", "nvidia", False),
        ("site-1", "site", "hospital-a", False),
        ("site-2", "site", "hospital-b", False),
        ("admin@hospital-a.org", "project_admin", "hospital-a", False),
    ]
    cert = (provisioned / "site-1" / "credentials" / "cert.pem").read_bytes()
    assert state[1]["serial"] == x509.load_pem_x509_certificate(cert).serial_number
    crl = _crl(provisioned)
    assert len(crl) == 0 and crl.is_signature_valid(_ca(provisioned).public_key())  # type: ignore[arg-type]


def test_rerunning_writes_nothing_that_exists(tmp_path: Path, provisioned: Path) -> None:
    before = _snapshot(provisioned)
    result = provision(tmp_path / "PROJECT.yml", tmp_path / "out")
    assert result.kits == [] and not result.ca_created
    assert sorted(result.kept) == sorted(
        ["server.example.org", "site-1", "site-2", "admin@hospital-a.org"]
    )
    after = _snapshot(provisioned)
    assert {k: v for k, v in after.items() if k != "project.yml"} == {
        k: v for k, v in before.items() if k != "project.yml"
    }


def test_rerunning_writes_a_kit_that_is_missing_from_the_same_ca(
    tmp_path: Path, provisioned: Path
) -> None:
    import shutil

    ca_before = (provisioned / "ca" / "ca.pem").read_bytes()
    shutil.rmtree(provisioned / "site-2")
    result = provision(tmp_path / "PROJECT.yml", tmp_path / "out")
    assert [k.name for k in result.kits] == ["site-2"]
    assert (provisioned / "ca" / "ca.pem").read_bytes() == ca_before
    assert (provisioned / "site-2" / "credentials" / "ca.pem").read_bytes() == ca_before


def test_add_issues_one_kit_from_the_same_ca_and_touches_no_other(
    tmp_path: Path, provisioned: Path
) -> None:
    before = _snapshot(provisioned)
    _write(tmp_path, _with_site_3())
    result = provision(tmp_path / "PROJECT.yml", tmp_path / "out", add="site-3")
    assert [(k.name, k.role, k.org) for k in result.kits] == [("site-3", "site", "hospital-c")]
    after = _snapshot(provisioned)
    changed = {k for k in after if before.get(k) != after[k]}
    assert {k for k in changed if not k.startswith("site-3/")} == {"ca/state.yaml", "project.yml"}
    material = read_kit_credentials(provisioned / "site-3")
    material.certificate.verify_directly_issued_by(_ca(provisioned))
    assert material.ca_pem == (provisioned / "ca" / "ca.pem").read_bytes()
    assert [e["name"] for e in _state(provisioned)][-1] == "site-3"
    copy = yaml.safe_load((provisioned / "project.yml").read_text())
    assert [s["name"] for s in copy["sites"]] == ["site-1", "site-2", "site-3"]


def test_add_refuses_a_name_not_in_the_project_file(tmp_path: Path, provisioned: Path) -> None:
    with pytest.raises(ProvisionError, match=r"'site-3' is not in .*PROJECT.yml; add its entry"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out", add="site-3")


def test_add_refuses_a_participant_whose_kit_is_valid(tmp_path: Path, provisioned: Path) -> None:
    with pytest.raises(ProvisionError, match=r"--revoke site-1\), then --add site-1"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out", add="site-1")


def test_add_after_revoke_issues_a_new_certificate(tmp_path: Path, provisioned: Path) -> None:
    old = read_kit_credentials(provisioned / "site-1").certificate.serial_number
    provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-1")
    provision(tmp_path / "PROJECT.yml", tmp_path / "out", add="site-1")
    new = read_kit_credentials(provisioned / "site-1").certificate.serial_number
    assert new != old
    assert {r.serial_number for r in _crl(provisioned)} == {old}


def test_add_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match=r"no CA in .*provision the project first"):
        provision(_write(tmp_path, PROJECT), tmp_path / "out", add="site-1")


def test_changing_the_server_after_kits_were_handed_out_is_refused(
    tmp_path: Path, provisioned: Path
) -> None:
    _write(tmp_path, _with_site_3().replace("port: 8002", "port: 9000"))
    with pytest.raises(ProvisionError, match=r"would not reach the server.*--new-ca"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out", add="site-3")


def test_revoke_writes_a_crl_signed_by_the_ca_into_every_kit(
    tmp_path: Path, provisioned: Path
) -> None:
    serial = read_kit_credentials(provisioned / "site-2").certificate.serial_number
    result = provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-2")
    assert [r.name for r in result.revoked] == ["site-2"]
    crl = _crl(provisioned)
    assert [r.serial_number for r in crl] == [serial]
    assert crl.is_signature_valid(_ca(provisioned).public_key())  # type: ignore[arg-type]
    assert crl.issuer == _ca(provisioned).subject
    kits = sorted(p.name for p in result.crl_copies)
    assert kits == sorted(["server.example.org", "site-1", "site-2", "admin@hospital-a.org"])
    for name in kits:
        assert (provisioned / name / "crl.pem").read_bytes() == (
            provisioned / "ca" / "crl.pem"
        ).read_bytes()
    assert [e["revoked"] for e in _state(provisioned) if e["name"] == "site-2"] == [True]


def test_revoking_twice_keeps_one_entry_and_says_so(tmp_path: Path, provisioned: Path) -> None:
    provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-2")
    again = provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-2")
    assert again.revoked == [] and "already revoked" in again.warnings[0]
    assert len(_crl(provisioned)) == 1


def test_revoke_refuses_a_name_the_ca_never_certified(tmp_path: Path, provisioned: Path) -> None:
    with pytest.raises(ProvisionError, match=r"'site-9' holds no certificate of this CA"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-9")


def test_new_ca_replaces_the_ca_and_every_kit_and_says_so(
    tmp_path: Path, provisioned: Path
) -> None:
    old_ca = _ca(provisioned)
    (provisioned / "notes.txt").write_text("mine")
    result = provision(tmp_path / "PROJECT.yml", tmp_path / "out", new_ca=True)
    assert result.ca_created
    assert sorted(p.name for p in result.removed) == sorted(
        ["ca", "server.example.org", "site-1", "site-2", "admin@hospital-a.org"]
    )
    new_ca = _ca(provisioned)
    assert new_ca.public_key() != old_ca.public_key()
    for kit in result.kits:
        read_kit_credentials(kit.folder).certificate.verify_directly_issued_by(new_ca)
    assert (provisioned / "notes.txt").read_text() == "mine"  # only what provisioning wrote goes


def test_kits_without_their_ca_are_never_silently_replaced(
    tmp_path: Path, provisioned: Path
) -> None:
    import shutil

    shutil.rmtree(provisioned / "ca")
    with pytest.raises(ProvisionError, match=r"holds kits .* but no CA.*--new-ca"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out")


def test_a_folder_that_is_not_a_kit_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out" / "net" / "site-1").mkdir(parents=True)
    (tmp_path / "out" / "net" / "site-1" / "data.csv").write_text("precious")
    with pytest.raises(ProvisionError, match=r"is not a startup kit; move it away"):
        provision(_write(tmp_path, PROJECT), tmp_path / "out")
    assert (tmp_path / "out" / "net" / "site-1" / "data.csv").read_text() == "precious"


def test_flags_go_one_at_a_time(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match=r"one at a time"):
        provision(_write(tmp_path, PROJECT), tmp_path / "out", add="site-1", new_ca=True)


def test_a_passphrase_encrypts_every_participant_key(tmp_path: Path) -> None:
    result = provision(_write(tmp_path, PROJECT), tmp_path / "out", passphrase=b"s3cret")
    assert len(result.kits) == 4
    for kit in result.kits:
        data = (kit.folder / "credentials" / "key.pem").read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, None)
        assert read_kit_credentials(kit.folder, b"s3cret").certificate.serial_number == kit.serial
        with pytest.raises(CredentialError, match=r"encrypted with a passphrase"):
            read_kit_credentials(kit.folder)
        with pytest.raises(CredentialError, match=r"cannot be decrypted"):
            read_kit_credentials(kit.folder, b"wrong")


def test_the_ca_key_is_read_as_strictly_as_any_credential(
    tmp_path: Path, provisioned: Path
) -> None:
    key = provisioned / "ca" / "ca.key"
    key.chmod(0o644)
    with pytest.raises(CredentialError, match=rf"chmod 600 {key}"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-1")


def test_a_lost_record_of_issued_certificates_stops_provisioning(
    tmp_path: Path, provisioned: Path
) -> None:
    (provisioned / "ca" / "state.yaml").unlink()
    with pytest.raises(ProvisionError, match=r"record of issued certificates is unreadable"):
        provision(tmp_path / "PROJECT.yml", tmp_path / "out", revoke="site-1")
