"""Reading a kit: what the runtime reads of it, credentials as strictly as POC secrets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fl_core.config.federation import load_federation
from fl_core.config.kit import load_kit
from fl_core.credentials import CredentialError
from fl_core.pki.kit import read_kit_credentials
from fl_core.provision import provision

PROJECT = """\
project: net
server: {name: server.example.org, port: 8002}
sites: [{name: site-1, org: a}, {name: site-2, org: b}]
"""


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kits")
    (folder / "PROJECT.yml").write_text(PROJECT)
    provision(folder / "PROJECT.yml", folder / "out")
    return folder / "out" / "net"


@pytest.fixture
def kit(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "site-1"
    shutil.copytree(out / "site-1", copy)  # copy2 keeps the modes
    return copy


def test_what_provisioning_writes_the_runtime_reads(kit: Path) -> None:
    info = load_kit(kit)
    assert (info.project, info.name, info.org, info.role) == ("net", "site-1", "a", "site")
    federation = load_federation(kit)
    assert federation.mode == "production"
    assert federation.security.name == "pki"
    assert federation.server.url == "grpc://server.example.org:8002"
    assert federation.server.listen == "grpc://0.0.0.0:8002"
    assert federation.sites == ()


def test_credentials_read_and_match(kit: Path) -> None:
    material = read_kit_credentials(kit)
    assert material.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("name", ["key.pem", "cert.pem", "ca.pem"])
def test_a_credential_open_to_others_is_refused_with_the_chmod(kit: Path, name: str) -> None:
    path = kit / "credentials" / name
    path.chmod(0o644)
    with pytest.raises(CredentialError, match=rf"chmod 600 {path}"):
        read_kit_credentials(kit)


def test_a_credentials_folder_open_to_others_is_refused(kit: Path) -> None:
    (kit / "credentials").chmod(0o755)
    with pytest.raises(CredentialError, match=r"the folder is open to others .*chmod 700"):
        read_kit_credentials(kit)


def test_a_symlinked_key_is_refused(kit: Path, tmp_path: Path) -> None:
    key = kit / "credentials" / "key.pem"
    elsewhere = tmp_path / "key.pem"
    key.rename(elsewhere)
    key.symlink_to(elsewhere)
    with pytest.raises(CredentialError, match=r"cannot be read"):
        read_kit_credentials(kit)


def test_a_malformed_key_or_certificate_says_so(kit: Path) -> None:
    key = kit / "credentials" / "key.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CredentialError, match=r"the key malformed"):
        read_kit_credentials(kit)


def test_a_certificate_of_another_kit_is_refused(kit: Path, out: Path) -> None:
    cert = kit / "credentials" / "cert.pem"
    cert.write_bytes((out / "site-2" / "credentials" / "cert.pem").read_bytes())
    with pytest.raises(CredentialError, match=r"does not match cert.pem"):
        read_kit_credentials(kit)


def test_a_missing_key_says_where(kit: Path) -> None:
    (kit / "credentials" / "key.pem").unlink()
    with pytest.raises(CredentialError, match=r"key.pem: not found in the startup kit"):
        read_kit_credentials(kit)
