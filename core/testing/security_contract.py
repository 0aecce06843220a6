"""The security-provider contract: what every `SecurityProvider` must do.

Subclass `SecurityProviderContract`, name the provider as a federation config
would (`component`, `plugin`; see `fl_core.testing.registered`), give its
options with the `provider_options` fixture (a PKI provider points at a
startup kit built in `tmp_path`), and state what the provider claims:

- `authenticates`: it knows who is who. Then `known_identities` must each get
  credentials whose certificate names them, and an actor it does not know is
  refused every action. A provider that does not authenticate (`none`) may
  hand out no credentials at all and allow everything.
- `allowed` / `refused`: `(actor, action, owner)` triples (`Identity`s; the
  owner is who submitted the job, or None) that it must allow or refuse.

    from fl_core.testing import SecurityProviderContract

    class TestMyProvider(SecurityProviderContract):
        component = "mine"
        plugin = "my_plugin"
        authenticates = True
        known_identities = ("server", "site-1")
        refused = ((Identity("site-1", "org-a", "site"), "submit_job", None),)

        @pytest.fixture
        def provider_options(self, tmp_path):
            return {"kit": str(make_kit(tmp_path))}

Credentials, when a provider gives them, must be PEM: a certificate chain
whose first certificate names the identity (its common name is the identity,
or the identity is a cell under it: `site-1` for `site-1.job7`), was issued
by one of `root_certificates`, and matches the private key; or an empty chain
and key (this end presents no certificate) with the roots it trusts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fl_core.errors import ConfigError, FlCoreError
from fl_core.spec import ComponentKind
from fl_core.spec.security import (
    AdmissionRefused,
    Credentials,
    Identity,
    SecurityProvider,
    SignatureError,
)
from fl_core.testing.registered import PluginRef, component_factory

__all__ = ["SecurityProviderContract", "check_credentials"]

ACTIONS = ("submit_job", "abort_job", "view_job", "download_job", "list_sites", "shutdown")
"""Actions the suite asks about; a provider answers every action, known or not."""
STRANGER = "stranger-never-provisioned"
"""An identity no provider was set up with."""


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert names, f"the certificate {cert.subject.rfc4514_string()} has no common name"
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def check_credentials(
    identity: str, credentials: Credentials, provider: SecurityProvider | None = None
) -> None:
    """Fail the test unless `credentials` are well-formed PEM for `identity` (see the module).

    With a `provider` that proves names, the certificate must be one that
    `provider.admit` takes for `identity` (a server certificate named after
    its host is the cell `server`); otherwise its common name must be the
    identity or a cell above it.
    """
    assert isinstance(credentials, Credentials), type(credentials)
    for field in ("certificate_chain", "private_key", "root_certificates"):
        assert isinstance(getattr(credentials, field), bytes), f"{field} is not bytes"
    assert credentials.root_certificates, "no root certificates: nothing to verify peers with"
    roots = x509.load_pem_x509_certificates(credentials.root_certificates)
    if not credentials.certificate_chain and not credentials.private_key:
        return  # this end presents no certificate
    assert credentials.certificate_chain and credentials.private_key, (
        "a certificate chain without a key, or a key without a chain"
    )
    leaf = x509.load_pem_x509_certificates(credentials.certificate_chain)[0]
    name = _common_name(leaf)
    if provider is not None and provider.proves_names:
        provider.admit(leaf.public_bytes(serialization.Encoding.DER), identity)  # raises if not
    else:
        assert identity == name or identity.startswith(name + "."), (
            f"the certificate for {identity!r} names {name!r}"
        )
    issuers = [root for root in roots if root.subject == leaf.issuer]
    assert issuers, f"the certificate of {identity!r} was not issued by a root it carries"
    leaf.verify_directly_issued_by(issuers[0])  # raises if the signature is wrong
    key = serialization.load_pem_private_key(credentials.private_key, password=None)
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki), (
        f"the private key for {identity!r} does not match its certificate"
    )


class SecurityProviderContract:
    """What every security provider must do; see the module docstring."""

    plugin: ClassVar[PluginRef | None] = None
    """The plugin that registers the provider; None: every installed plugin."""
    component: ClassVar[str] = ""
    """The provider's registered name (what a federation config writes)."""
    authenticates: ClassVar[bool] = False
    """Whether the provider knows identities (and refuses strangers)."""
    known_identities: ClassVar[Sequence[str]] = ()
    """Identities the provider was set up with (by `provider_options`)."""
    allowed: ClassVar[Sequence[tuple[Identity, str, Identity | None]]] = ()
    """(actor, action, owner of the job or None) the provider must allow."""
    refused: ClassVar[Sequence[tuple[Identity, str, Identity | None]]] = ()
    """(actor, action, owner of the job or None) the provider must refuse."""

    @pytest.fixture
    def provider_options(self) -> dict[str, Any]:
        """The factory's options (default none)."""
        return {}

    @pytest.fixture
    def provider_factory(self) -> Callable[..., Any]:
        """`(**options) -> SecurityProvider`: by default the plugin's registered factory."""
        if not self.component:
            pytest.fail(
                f"{type(self).__name__} must set `component` (and `plugin`) or define a "
                "provider_factory fixture"
            )
        return component_factory(ComponentKind.SECURITY, self.component, self.plugin)

    @pytest.fixture
    def provider(
        self, provider_factory: Callable[..., Any], provider_options: dict[str, Any]
    ) -> SecurityProvider:
        """The provider under test."""
        provider = provider_factory(**provider_options)
        assert isinstance(provider, SecurityProvider)
        return provider

    # --- the factory ---------------------------------------------------------------

    def test_an_unknown_option_is_a_config_error_naming_it(
        self, provider_factory: Callable[..., Any], provider_options: dict[str, Any]
    ) -> None:
        with pytest.raises(ConfigError) as info:
            provider_factory(**provider_options, no_such_option_xyz=1)
        assert info.value.key.endswith("no_such_option_xyz"), info.value.key

    # --- credentials ---------------------------------------------------------------

    def test_credentials_are_none_or_pem_for_the_identity(self, provider: SecurityProvider) -> None:
        for identity in (*self.known_identities, "server", "site-1"):
            try:
                credentials = provider.credentials(identity)
            except FlCoreError:
                if identity in self.known_identities:
                    raise
                continue  # an identity the provider was not set up with
            if credentials is not None:
                check_credentials(identity, credentials, provider)

    def test_known_identities_get_certificates_naming_them(
        self, provider: SecurityProvider
    ) -> None:
        if not self.authenticates:
            pytest.skip("the provider does not authenticate: credentials are optional")
        assert self.known_identities, "a provider that authenticates must list known_identities"
        for identity in self.known_identities:
            credentials = provider.credentials(identity)
            assert credentials is not None, f"no credentials for {identity!r}"
            assert credentials.certificate_chain, f"{identity!r} would present no certificate"
            check_credentials(identity, credentials, provider)

    def test_a_stranger_gets_no_certificate(self, provider: SecurityProvider) -> None:
        try:
            credentials = provider.credentials(STRANGER)
        except FlCoreError:
            return  # refused outright, with the reason
        assert credentials is None or not credentials.certificate_chain, (
            f"the provider made up a certificate for {STRANGER!r}"
        )

    # --- authorization -------------------------------------------------------------

    def test_authorize_answers_a_reason_or_nothing_for_every_action(
        self, provider: SecurityProvider
    ) -> None:
        owner = Identity("someone@example.org", "example")
        actors = [Identity(name) for name in self.known_identities] + [Identity(STRANGER)]
        actors += [actor for actor, _, _ in (*self.allowed, *self.refused)]
        for actor in actors:
            for action in ACTIONS:
                for whose in (None, owner):
                    answer = provider.authorize(actor, action, whose)
                    assert type(answer) is str, f"authorize({actor}, {action!r}) -> {answer!r}"
                    assert provider.authorize(actor, action, whose) == answer  # no coin flips

    def test_a_stranger_is_refused_everything_with_a_reason(
        self, provider: SecurityProvider
    ) -> None:
        if not self.authenticates:
            pytest.skip("the provider does not authenticate: it cannot tell strangers apart")
        for action in ACTIONS:
            assert provider.authorize(Identity(STRANGER), action), action

    def test_what_the_provider_claims_to_allow_is_allowed(self, provider: SecurityProvider) -> None:
        if not self.allowed:
            pytest.skip("the class claims no allowed actions")
        for actor, action, owner in self.allowed:
            assert provider.authorize(actor, action, owner) == "", (actor, action, owner)

    def test_what_the_provider_claims_to_refuse_is_refused(
        self, provider: SecurityProvider
    ) -> None:
        if not self.refused:
            pytest.skip("the class claims no refused actions")
        for actor, action, owner in self.refused:
            assert provider.authorize(actor, action, owner), (actor, action, owner)

    # --- admission and signatures ----------------------------------------------------

    def test_a_link_without_a_certificate_is_refused_by_a_provider_that_proves_names(
        self, provider: SecurityProvider
    ) -> None:
        if not provider.proves_names:
            pytest.skip("the provider proves no names from certificates")
        for name in ("server", "site-1", *self.known_identities):
            with pytest.raises(AdmissionRefused):
                provider.admit(None, name)

    def test_a_signature_it_makes_it_verifies_and_a_changed_byte_it_refuses(
        self, provider: SecurityProvider
    ) -> None:
        signature = provider.sign(b"job manifest")
        if signature is None:
            assert provider.verify(b"job manifest", None) is None
            return
        assert provider.verify(b"job manifest", signature) is not None
        with pytest.raises(SignatureError):
            provider.verify(b"job manifesT", signature)
