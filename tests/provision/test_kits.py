"""What a kit holds: the layout, exact modes whatever the umask, and the certificates."""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_core.pki.identity import identity_of
from fl_core.provision import ProvisionResult, provision

PROJECT = """\
project: hospital-net
transport: grpc
server: {name: server.example.org, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}]
admins: [{name: admin@hospital-a.org, org: hospital-a, role: lead}]
"""


def make(tmp_path: Path, text: str = PROJECT) -> ProvisionResult:
    (tmp_path / "PROJECT.yml").write_text(text)
    return provision(tmp_path / "PROJECT.yml", tmp_path / "out")


@pytest.fixture(params=[0o000, 0o077, 0o022], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_layout_and_modes_are_exact_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    result = make(tmp_path)
    root = tmp_path / "out" / "hospital-net"
    assert result.root == root
    assert _mode(root) == 0o755
    assert _mode(root / "ca") == 0o700
    assert _mode(root / "ca" / "ca.key") == 0o600
    assert _mode(root / "ca" / "state.yaml") == 0o600
    for name in ("ca.pem", "crl.pem", "state.yaml"):
        assert (root / "ca" / name).is_file()
    expected = {
        "server.example.org": {"authorization.yaml"},
        "site-1": {"site_policy.yaml"},
        "admin@hospital-a.org": set(),
    }
    assert {k.name for k in result.kits} == set(expected)
    for name, extra in expected.items():
        kit = root / name
        assert _mode(kit) == 0o700
        assert {p.name for p in kit.iterdir()} == {
            "kit.yaml",
            "federation.yaml",
            "credentials",
            "crl.pem",
            "README.md",
            *extra,
        }
        assert _mode(kit / "credentials") == 0o700
        assert sorted(p.name for p in (kit / "credentials").iterdir()) == [
            "ca.pem",
            "cert.pem",
            "key.pem",
        ]
        for file in (kit / "credentials").iterdir():
            assert _mode(file) == 0o600, file
        for file in kit.iterdir():
            if file.is_file():
                assert _mode(file) & 0o022 == 0, f"{file} is writable by others"
        assert not (kit / "credentials" / "ca.key").exists()
        assert (kit / "crl.pem").read_bytes() == (root / "ca" / "crl.pem").read_bytes()
    assert (root / "project.yml").is_file()


def test_kit_yaml_and_federation_yaml_say_where_the_server_is(tmp_path: Path) -> None:
    make(tmp_path, PROJECT.replace("port: 8002", "port: 8002, host: 10.1.2.3"))
    kit = tmp_path / "out" / "hospital-net" / "site-1"
    assert yaml.safe_load((kit / "kit.yaml").read_text()) == {
        "project": "hospital-net",
        "name": "site-1",
        "org": "hospital-a",
        "role": "site",
        "server": {"name": "server.example.org", "host": "10.1.2.3", "port": 8002},
        "transport": "grpc",
    }
    assert yaml.safe_load((kit / "federation.yaml").read_text()) == {
        "name": "hospital-net",
        "mode": "production",
        "transport": "grpc",
        "security": {"name": "pki"},
        "launcher": "process",
        "server": {"listen": "grpc://0.0.0.0:8002", "url": "grpc://10.1.2.3:8002"},
        "sites": [],
    }


def test_the_server_kit_holds_the_default_rights_to_edit(tmp_path: Path) -> None:
    make(tmp_path)
    kit = tmp_path / "out" / "hospital-net" / "server.example.org"
    roles = yaml.safe_load((kit / "authorization.yaml").read_text())["roles"]
    assert roles["project_admin"] == dict.fromkeys(
        ("submit_job", "abort_job", "view_job", "download_job", "list_sites", "shutdown"), "any"
    )
    assert roles["org_admin"]["submit_job"] == "none"
    assert roles["org_admin"]["abort_job"] == "org"
    assert roles["lead"]["abort_job"] == "own"
    assert roles["member"] == {
        "submit_job": "none",
        "abort_job": "none",
        "view_job": "any",
        "download_job": "none",
        "list_sites": "any",
        "shutdown": "none",
    }


def test_a_site_kit_holds_a_commented_default_policy(tmp_path: Path) -> None:
    make(tmp_path)
    text = (tmp_path / "out" / "hospital-net" / "site-1" / "site_policy.yaml").read_text()
    assert text.startswith("#")
    policy = yaml.safe_load(text)
    assert set(policy) == {"run_job", "byoc", "read_results", "abort_job", "launchers", "images"}
    assert {"role": "lead"} in policy["run_job"]
    assert policy["launchers"] == ["process"]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("server.example.org", ["fl-core start server.example.org", "port 8002"]),
        ("site-1", ["fl-core start site-1", "fl-core stop site-1", "fl-core status site-1"]),
        ("admin@hospital-a.org", ["fl-core job submit JOB --kit admin@hospital-a.org"]),
    ],
)
def test_the_readme_tells_how_to_start_the_kit(tmp_path: Path, name: str, words: list[str]) -> None:
    make(tmp_path)
    text = (tmp_path / "out" / "hospital-net" / name / "README.md").read_text()
    for word in [*words, "crl.pem"]:
        assert word in text


def _certificate(tmp_path: Path, name: str) -> x509.Certificate:
    path = tmp_path / "out" / "hospital-net" / name / "credentials" / "cert.pem"
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ca(tmp_path: Path) -> x509.Certificate:
    path = tmp_path / "out" / "hospital-net" / "ca" / "ca.pem"
    return x509.load_pem_x509_certificate(path.read_bytes())


def _alt_names(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in names]


def test_the_ca_is_a_self_signed_root_that_signs_certificates_and_crls(tmp_path: Path) -> None:
    make(tmp_path)
    ca = _ca(tmp_path)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-net root CA"
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650


@pytest.mark.parametrize(
    ("name", "org", "role", "alt_names"),
    [
        (
            "server.example.org",
            "nvidia",
            "server",
            ["server.example.org", "localhost", "127.0.0.1"],
        ),
        ("site-1", "hospital-a", "site", ["site-1", "localhost", "127.0.0.1"]),
        ("admin@hospital-a.org", "hospital-a", "lead", []),
    ],
)
def test_each_certificate_names_its_holder_org_and_role(
    tmp_path: Path, name: str, org: str, role: str, alt_names: list[str]
) -> None:
    result = make(tmp_path)
    certificate = _certificate(tmp_path, name)
    identity = identity_of(certificate)
    assert (identity.name, identity.org, identity.role) == (name, org, role)
    assert identity.serial == next(k.serial for k in result.kits if k.name == name)
    certificate.verify_directly_issued_by(_ca(tmp_path))
    assert _alt_names(certificate) == alt_names
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert 364 <= (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days <= 366
    key = certificate.public_key()
    assert key.curve.name == "secp256r1"  # type: ignore[union-attr]


def test_a_server_reached_at_another_address_has_it_in_its_names(tmp_path: Path) -> None:
    make(tmp_path, PROJECT.replace("port: 8002", "port: 8002, host: 10.1.2.3"))
    names = _certificate(tmp_path, "server.example.org").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("10.1.2.3") in names.value.get_values_for_type(x509.IPAddress)


def test_valid_days_sets_the_certificates_lifetime(tmp_path: Path) -> None:
    make(tmp_path, PROJECT + "valid_days: 30\n")
    certificate = _certificate(tmp_path, "site-1")
    assert 29 <= (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days <= 31


def test_keys_are_unencrypted_pkcs8_without_a_passphrase(tmp_path: Path) -> None:
    make(tmp_path)
    data = (tmp_path / "out/hospital-net/site-1/credentials/key.pem").read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----")
    serialization.load_pem_private_key(data, None)
