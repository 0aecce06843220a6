"""`PkiSecurity`: a participant's startup kit as its security provider.

The kit's certificate is who this participant is; its CA is whom it trusts;
its `crl.pem` is whom the CA no longer trusts. A peer's certificate, which
its transport verified during the TLS handshake, is bound to the cells it may
be (`fl_core.pki.identity.grant_refusal`). Signatures are ECDSA-SHA256 with
the kit's key; a verifier trusts a signer whose certificate the same CA issued
and did not revoke, and says which check failed otherwise.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from fl_core.config.federation import FEDERATION_FILE
from fl_core.config.kit import load_kit
from fl_core.credentials import CredentialError
from fl_core.errors import ConfigError, FlCoreError
from fl_core.pki.identity import ADMIN_ROLES, grant_refusal, identity_of
from fl_core.pki.kit import (
    AUTHORIZATION_FILE,
    CREDENTIALS_DIR,
    CRL_FILE,
    SITE_POLICY_FILE,
    read_kit_credentials,
)
from fl_core.spec.security import (
    AdmissionRefused,
    Credentials,
    Identity,
    SecurityProvider,
    Signature,
    SignatureError,
)
from fl_plugins.security_pki.authorization import RightsFile
from fl_plugins.security_pki.revocation import RevocationList
from fl_plugins.security_pki.site_policy import SitePolicyFile

__all__ = ["PkiSecurity", "Rights", "from_options", "rights_for"]

OPTIONS: Final = ("kit", "passphrase_env")
_SIGNATURE: Final = ec.ECDSA(hashes.SHA256())
_DER: Final = Encoding.DER
ADMIN_IDENTITY: Final = "admin"
"""The identity an admin's process asks credentials for (`fl_core.containers.poc.admin_client`)."""
_CACHE: Final = 4096
"""Certificates whose issuer was checked, kept so a reconnecting peer costs no ECDSA verify."""


class Rights(Protocol):
    """What decides `authorize`: the server's rights or a site's policy."""

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """Why `actor` may not use `right` (on `owner`'s job), or ""."""
        ...


class NoRights:
    """An admin's kit: nothing is decided on an admin's machine, so everything is refused."""

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """Always a refusal."""
        return f"an admin's kit grants no rights ({right!r} asked by {actor.name or 'nobody'})"


def rights_for(role: str, kit: Path) -> Rights:
    """The rights a kit decides with: the server's, a site's own policy, or none (an admin).

    Both files are read again whenever they change, and a broken edit keeps
    the last good rules (see `RightsFile`, `SitePolicyFile`).
    """
    if role == "server":
        return RightsFile(kit / AUTHORIZATION_FILE)
    if role == "site":
        return SitePolicyFile(kit / SITE_POLICY_FILE)
    return NoRights()


def _describe(identity: Identity) -> str:
    return f"{identity.name} ({identity.role or 'no role'}, org {identity.org or '(none)'})"


class PkiSecurity(SecurityProvider):
    """The security provider of one startup kit (see the module docstring)."""

    proves_names = True

    def __init__(
        self, kit: str | Path, *, passphrase: bytes | None = None, rights: Rights | None = None
    ) -> None:
        self.kit = load_kit(kit)
        material = read_kit_credentials(self.kit.root, passphrase)
        self._material = material
        self._identity = identity_of(material.certificate)
        if (self._identity.name, self._identity.role) != (self.kit.name, self.kit.role):
            raise CredentialError(
                self.kit.root / CREDENTIALS_DIR,
                f"the certificate names {_describe(self._identity)}, but kit.yaml says "
                f"{self.kit.name} ({self.kit.role}); the kit was mixed up with another",
            )
        self._credentials = Credentials(material.certificate_pem, material.key_pem, material.ca_pem)
        self._crl = RevocationList(self.kit.root / CRL_FILE, material.ca)
        self._checked: dict[bytes, tuple[x509.Certificate, Identity]] = {}
        self.rights: Rights = (
            rights if rights is not None else rights_for(self.kit.role, self.kit.root)
        )

    # --- who this participant is -----------------------------------------------------

    def identity(self) -> Identity:
        """The kit's own identity (its certificate's CN, O, OU and serial)."""
        return self._identity

    def credentials(self, identity: str) -> Credentials:
        """The kit's certificate, key and CA, for a cell its certificate grants."""
        reason = grant_refusal(self._identity, identity)
        if reason and identity == ADMIN_IDENTITY and self._identity.role in ADMIN_ROLES:
            # The admin client's container asks for "admin" before it names its cell
            # (admin_cell_prefix(email)-<hex>); that name is bound to the certificate
            # where it counts, when the server admits the link.
            reason = ""
        if reason:
            raise FlCoreError(
                f"the kit {self.kit.root} ({_describe(self._identity)}) holds no credentials "
                f"for the cell {identity!r}: {reason}"
            )
        return self._credentials

    # --- who a peer is ---------------------------------------------------------------

    def _certified(self, certificate: x509.Certificate, der: bytes) -> str:
        """Why the project's CA does not vouch for `certificate` now, or ""."""
        if der not in self._checked:
            try:
                certificate.verify_directly_issued_by(self._material.ca)
            except (ValueError, TypeError, InvalidSignature):
                issuer = certificate.issuer.rfc4514_string()
                return f"was not issued by this project's CA (issuer {issuer})"
            if len(self._checked) >= _CACHE:
                self._checked.clear()
            self._checked[der] = (certificate, identity_of(certificate))
        now = datetime.datetime.now(datetime.UTC)
        if now > certificate.not_valid_after_utc:
            return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if now < certificate.not_valid_before_utc:
            return f"is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        if certificate.serial_number in self._crl.serials():
            return f"was revoked (serial {certificate.serial_number:x}, {self._crl.path})"
        return ""

    def _parse(self, der: bytes) -> x509.Certificate | None:
        cached = self._checked.get(der)
        if cached is not None:
            return cached[0]
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError:
            return None

    def admit(self, certificate: bytes | None, name: str) -> Identity:
        """Who the peer claiming `name` is; `AdmissionRefused` saying why not."""
        if certificate is None:
            raise AdmissionRefused(
                f"the peer claiming {name!r} presented no certificate (plaintext, or TLS without "
                "a client certificate); this federation admits only participants with a "
                f"certificate from the {self.kit.project} CA"
            )
        parsed = self._parse(certificate)
        if parsed is None:
            raise AdmissionRefused(f"the peer claiming {name!r} presented no valid certificate")
        identity = identity_of(parsed)
        problem = self._certified(parsed, certificate)
        if problem:
            raise AdmissionRefused(
                f"certificate of {_describe(identity)}, claiming {name!r}, {problem}"
            )
        reason = grant_refusal(identity, name)
        if reason:
            raise AdmissionRefused(
                f"certificate of {_describe(identity)} may not be cell {name!r}: {reason}"
            )
        return identity

    def revoked(self, identity: Identity) -> bool:
        """Whether the CA revoked `identity`'s certificate (by serial)."""
        return identity.serial != 0 and identity.serial in self._crl.serials()

    # --- who may do what -------------------------------------------------------------

    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        """Why `actor` may not `action`, as the kit's rights say; "" when it may."""
        if actor.role in ADMIN_ROLES and actor.serial and self.revoked(actor):
            return f"{_describe(actor)} was revoked (serial {actor.serial:x})"
        return self.rights.refusal(actor, action, owner)

    # --- signatures ------------------------------------------------------------------

    def sign(self, data: bytes) -> Signature:
        """`data` signed with the kit's key (ECDSA-SHA256), with the kit's certificate."""
        value = self._material.key.sign(data, _SIGNATURE)
        return Signature(certificate=self._material.certificate_pem, value=value)

    def verify(self, data: bytes, signature: Signature | None) -> Identity:
        """Who signed `data`; `SignatureError` naming the check that failed."""
        if signature is None:
            raise SignatureError(
                "unsigned: a signature by a certificate of this project's CA is required"
            )
        try:
            certificate = x509.load_pem_x509_certificate(signature.certificate)
        except ValueError:
            raise SignatureError("the signer's certificate is not a PEM certificate") from None
        signer = identity_of(certificate)
        problem = self._certified(certificate, certificate.public_bytes(_DER))
        if problem:
            raise SignatureError(f"the signer's certificate ({_describe(signer)}) {problem}")
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SignatureError(f"the signer's certificate ({_describe(signer)}) has no EC key")
        try:
            key.verify(signature.value, data, _SIGNATURE)
        except InvalidSignature:
            raise SignatureError(
                f"the signature of {_describe(signer)} does not match the data: it was changed "
                "after signing, or signed by another key"
            ) from None
        return signer


def from_options(options: Mapping[str, Any]) -> PkiSecurity:
    """The provider a federation's `security: {name: pki, options: ...}` asks for.

    `kit` (required) is the startup kit's folder; `passphrase_env` names the
    environment variable holding its key's passphrase (never the passphrase
    itself: options end up in files and process listings).
    """
    kit = options.get("kit")
    source = (
        str(Path(kit) / FEDERATION_FILE) if isinstance(kit, str | Path) and kit else FEDERATION_FILE
    )
    for key in options:
        if key not in OPTIONS:
            raise ConfigError(
                source,
                f"security.options.{key}",
                f"unknown option; `pki` takes {', '.join(OPTIONS)}",
            )
    if not isinstance(kit, str | Path) or not str(kit):
        raise ConfigError(
            source, "security.options.kit", "required: the folder of this participant's startup kit"
        )
    passphrase = None
    variable = options.get("passphrase_env")
    if variable is not None:
        if not isinstance(variable, str) or not variable:
            raise ConfigError(
                source, "security.options.passphrase_env", "expected an environment variable's name"
            )
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(
                source,
                "security.options.passphrase_env",
                f"the environment variable {variable} is not set; "
                "put the kit key's passphrase in it",
            )
        passphrase = value.encode()
    if not Path(kit).is_dir():
        raise ConfigError(source, "security.options.kit", f"not a folder: {kit}")
    return PkiSecurity(kit, passphrase=passphrase)
