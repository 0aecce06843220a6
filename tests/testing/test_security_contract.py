"""The security-provider contract: its credential checks, and a provider that authenticates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fl_core.errors import ConfigError, FlCoreError
from fl_core.spec import Register, hookimpl
from fl_core.spec.security import Credentials, Identity, SecurityProvider
from fl_core.testing.pki import Pki
from fl_core.testing.security_contract import SecurityProviderContract, check_credentials


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_credentials_naming_the_identity_pass(pki: Pki) -> None:
    check_credentials("client", pki.client.credentials)


def test_a_cell_under_the_certificates_name_passes(pki: Pki) -> None:
    check_credentials("client.job7", pki.client.credentials)


def test_no_certificate_with_roots_passes(pki: Pki) -> None:
    check_credentials("anyone", pki.anonymous)


def test_a_certificate_for_another_identity_fails(pki: Pki) -> None:
    with pytest.raises(AssertionError, match="names 'client'"):
        check_credentials("site-1", pki.client.credentials)
    with pytest.raises(AssertionError, match="names 'client'"):
        check_credentials("clientele", pki.client.credentials)


def test_a_key_that_does_not_match_the_certificate_fails(pki: Pki) -> None:
    mixed = Credentials(
        pki.client.credentials.certificate_chain,
        pki.server.credentials.private_key,
        pki.ca_pem,
    )
    with pytest.raises(AssertionError, match="does not match its certificate"):
        check_credentials("client", mixed)


def test_a_certificate_from_a_ca_not_in_the_roots_fails(pki: Pki) -> None:
    with pytest.raises(AssertionError, match="not issued by a root it carries"):
        check_credentials("rogue-client", pki.rogue_client.credentials)


def test_a_chain_without_a_key_fails(pki: Pki) -> None:
    half = Credentials(pki.client.credentials.certificate_chain, b"", pki.ca_pem)
    with pytest.raises(AssertionError, match="without a key"):
        check_credentials("client", half)


def test_no_roots_fails() -> None:
    with pytest.raises(AssertionError, match="no root certificates"):
        check_credentials("client", Credentials(b"", b"", b""))


# --- a provider that authenticates passes the whole suite ----------------------------


class KitProvider(SecurityProvider):
    """Knows the identities of a `Pki`; they may list jobs, only the server may submit."""

    def __init__(self, folder: str) -> None:
        pki = Pki(Path(folder))
        self.identities = {"server": pki.server, "client": pki.client}

    def credentials(self, identity: str) -> Credentials | None:
        known = self.identities.get(identity.split(".")[0])
        if known is None:
            raise FlCoreError(f"no certificate for {identity!r} in this kit")
        return known.credentials

    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        if actor.name not in self.identities:
            return f"{actor.name} is not in this kit"
        if action == "view_job" or actor.name == "server":
            return ""
        return f"only the server has the right {action!r}"


def make_kit_provider(**options: Any) -> KitProvider:
    unknown = sorted(set(options) - {"folder"})
    if unknown:
        raise ConfigError("federation.yaml", f"security.options.{unknown[0]}", "unknown option")
    return KitProvider(**options)


class KitPlugin:
    @hookimpl
    def fl_core_register_security_providers(self, register: Register) -> None:
        register("kit", make_kit_provider)


class TestAnAuthenticatingProvider(SecurityProviderContract):
    component = "kit"
    plugin = ("kit_plugin", KitPlugin())
    authenticates = True
    known_identities = ("server", "client", "client.job3")
    allowed = ((Identity("client"), "view_job", None), (Identity("server"), "submit_job", None))
    refused = ((Identity("client"), "submit_job", None),)

    @pytest.fixture
    def provider_options(self, tmp_path: Path) -> dict[str, Any]:
        return {"folder": str(tmp_path)}
