"""The `pki` provider: its hook and options, the contract, and the rights it decides with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from fl_core.credentials import CredentialError
from fl_core.errors import ConfigError, FlCoreError
from fl_core.pki.identity import admin_cell_prefix
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.provision import provision
from fl_core.spec.security import Identity, SecurityProvider
from fl_core.testing.security_contract import SecurityProviderContract
from fl_plugins.security_pki import hooks
from fl_plugins.security_pki.provider import PkiSecurity

PROJECT = """\
project: net
server: {name: server, port: 8002, org: nvidia}
sites: [{name: site-1, org: hospital-a}]
admins:
  - {name: boss@a.org, org: hospital-a, role: project_admin}
  - {name: lead@a.org, org: hospital-a, role: lead}
"""

BOSS = Identity("boss@a.org", "hospital-a", "project_admin", 1)
LEAD = Identity("lead@a.org", "hospital-a", "lead", 2)
OTHER_LEAD = Identity("lead@b.org", "hospital-b", "lead", 3)
ORG_ADMIN = Identity("org@b.org", "hospital-b", "org_admin", 4)
MEMBER = Identity("member@a.org", "hospital-a", "member", 5)


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    (folder / "PROJECT.yml").write_text(PROJECT)
    provision(folder / "PROJECT.yml", folder / "out")
    return folder / "out" / "net"


@pytest.fixture
def registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("security_pki", hooks)]).registry()


def test_the_hook_registers_pki_and_nothing_else(registry: Registry) -> None:
    assert registry.names("security") == {"pki": "security_pki"}


def test_the_factory_builds_the_provider_of_a_kit(registry: Registry, kits: Path) -> None:
    provider = registry.create("security", "pki", {"kit": str(kits / "site-1")})
    assert isinstance(provider, PkiSecurity) and isinstance(provider, SecurityProvider)
    assert provider.proves_names
    assert provider.identity().name == "site-1"


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({}, "security.options.kit", "required"),
        ({"kit": ""}, "security.options.kit", "required"),
        ({"kit": "/no/such/kit"}, "security.options.kit", "not a folder"),
        ({"kit": "KIT", "cert": "x"}, "security.options.cert", "unknown option"),
        (
            {"kit": "KIT", "passphrase_env": "FL_TEST_UNSET"},
            "security.options.passphrase_env",
            "not set",
        ),
        ({"kit": "KIT", "passphrase_env": 3}, "security.options.passphrase_env", "variable's name"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(
    registry: Registry, kits: Path, options: dict[str, Any], key: str, words: str
) -> None:
    if options.get("kit") == "KIT":
        options = {**options, "kit": str(kits / "site-1")}
    with pytest.raises(ConfigError) as info:
        registry.create("security", "pki", options)
    assert info.value.key == key
    assert words in info.value.problem


def test_an_encrypted_kit_opens_with_the_passphrase_from_the_environment(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "PROJECT.yml").write_text(PROJECT)
    provision(tmp_path / "PROJECT.yml", tmp_path / "out", passphrase=b"open sesame")
    kit = str(tmp_path / "out" / "net" / "site-1")
    with pytest.raises(CredentialError, match=r"encrypted with a passphrase.*passphrase_env"):
        registry.create("security", "pki", {"kit": kit})
    monkeypatch.setenv("FL_TEST_PASSPHRASE", "open sesame")
    provider = registry.create(
        "security", "pki", {"kit": kit, "passphrase_env": "FL_TEST_PASSPHRASE"}
    )
    assert provider.credentials("site-1").private_key.startswith(b"-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv("FL_TEST_PASSPHRASE", "wrong")
    with pytest.raises(CredentialError, match=r"cannot be decrypted"):
        registry.create("security", "pki", {"kit": kit, "passphrase_env": "FL_TEST_PASSPHRASE"})


def test_a_kit_holding_another_participants_certificate_is_refused(
    kits: Path, tmp_path: Path
) -> None:
    kit = tmp_path / "site-1"
    shutil.copytree(kits / "site-1", kit)
    for name in ("cert.pem", "key.pem"):
        source = kits / "server" / "credentials" / name
        (kit / "credentials" / name).write_bytes(source.read_bytes())
    with pytest.raises(CredentialError, match=r"names server .* but kit.yaml says site-1"):
        PkiSecurity(kit)


def test_a_kit_without_its_crl_is_refused(kits: Path, tmp_path: Path) -> None:
    kit = tmp_path / "site-1"
    shutil.copytree(kits / "site-1", kit)
    (kit / "crl.pem").unlink()
    with pytest.raises(CredentialError, match=r"crl.pem: not found; copy the project's current"):
        PkiSecurity(kit)


# --- credentials for the cells a certificate grants ------------------------------------


def test_credentials_only_for_cells_the_certificate_grants(kits: Path) -> None:
    site = PkiSecurity(kits / "site-1")
    assert site.credentials("site-1.job7.trainer").certificate_chain.startswith(b"-----BEGIN")
    with pytest.raises(FlCoreError, match=r"no credentials for the cell 'site-2'"):
        site.credentials("site-2")
    with pytest.raises(FlCoreError, match=r"grants only site-1"):
        site.credentials("server")
    admin = PkiSecurity(kits / "boss@a.org")
    cell = admin_cell_prefix("boss@a.org") + "-1f2e"
    assert admin.credentials(cell).certificate_chain
    with pytest.raises(FlCoreError, match=r"admin certificate grants only"):
        admin.credentials(admin_cell_prefix("lead@a.org"))
    assert admin.credentials("admin") == admin.credentials(cell)  # what the admin client asks
    with pytest.raises(FlCoreError, match=r"grants only site-1"):
        site.credentials("admin")


# --- the rights the provider decides with (defaults until the policy files are read) ---------


def test_the_server_decides_with_the_default_rights(kits: Path) -> None:
    server = PkiSecurity(kits / "server")
    assert server.authorize(BOSS, "shutdown") == ""
    assert server.authorize(LEAD, "submit_job") == ""
    assert server.authorize(LEAD, "abort_job", LEAD) == ""
    assert "may abort_job only its own jobs" in server.authorize(LEAD, "abort_job", OTHER_LEAD)
    assert server.authorize(ORG_ADMIN, "abort_job", OTHER_LEAD) == ""
    assert "only jobs of org hospital-b" in server.authorize(ORG_ADMIN, "abort_job", LEAD)
    assert "has no right 'submit_job'" in server.authorize(MEMBER, "submit_job")
    assert "has no right 'shutdown'" in server.authorize(ORG_ADMIN, "shutdown")
    assert server.authorize(Identity("site-1", "hospital-a", "site"), "submit_job")


def test_a_site_decides_with_its_default_policy(kits: Path) -> None:
    site = PkiSecurity(kits / "site-1")
    assert site.authorize(LEAD, "run_job") == ""
    assert site.authorize(LEAD, "read_results", LEAD) == ""
    assert site.authorize(LEAD, "read_results", OTHER_LEAD)
    assert site.authorize(MEMBER, "run_job")
    assert site.authorize(ORG_ADMIN, "byoc")
    assert "unknown site action 'submit_job'" in site.authorize(BOSS, "submit_job")
    assert site.authorize(BOSS, "launcher:process") == ""
    refusal = site.authorize(BOSS, "launcher:docker")
    assert "launcher 'docker' is not allowed on this site" in refusal
    assert site.authorize(BOSS, "image:python:3.11") == ""


def test_an_admin_kit_grants_nothing(kits: Path) -> None:
    admin = PkiSecurity(kits / "boss@a.org")
    assert admin.authorize(BOSS, "view_job")


# --- the shared contract ----------------------------------------------------------------


class TestPkiSiteKitContract(SecurityProviderContract):
    """The contract through the registered factory, with a site's kit."""

    component = "pki"
    plugin = "security_pki"
    authenticates = True
    known_identities = ("site-1", "site-1.job7", "site-1.job7.trainer")
    allowed = ((BOSS, "run_job", None), (LEAD, "abort_job", LEAD))
    refused = ((MEMBER, "run_job", None), (LEAD, "abort_job", OTHER_LEAD))

    @pytest.fixture
    def provider_options(self, kits: Path) -> dict[str, Any]:
        return {"kit": str(kits / "site-1")}


class TestPkiServerKitContract(SecurityProviderContract):
    """The contract with the server's kit (its host name is `server` here)."""

    component = "pki"
    plugin = "security_pki"
    authenticates = True
    known_identities = ("server", "server.job7")
    allowed = ((BOSS, "shutdown", None), (LEAD, "submit_job", None), (LEAD, "abort_job", LEAD))
    refused = (
        (MEMBER, "submit_job", None),
        (ORG_ADMIN, "shutdown", None),
        (LEAD, "download_job", OTHER_LEAD),
    )

    @pytest.fixture
    def provider_options(self, kits: Path) -> dict[str, Any]:
        return {"kit": str(kits / "server")}


@pytest.fixture(scope="module")
def hosted_kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki-hosted")
    text = PROJECT.replace("{name: server, port", "{name: server.example.org, port")
    (folder / "PROJECT.yml").write_text(text)
    provision(folder / "PROJECT.yml", folder / "out")
    return folder / "out" / "net"


class TestPkiServerKitNamedAfterItsHostContract(SecurityProviderContract):
    """The contract with a server kit whose certificate names its host, as in production."""

    component = "pki"
    plugin = "security_pki"
    authenticates = True
    known_identities = ("server", "server.job7")

    @pytest.fixture
    def provider_options(self, hosted_kits: Path) -> dict[str, Any]:
        return {"kit": str(hosted_kits / "server.example.org")}
