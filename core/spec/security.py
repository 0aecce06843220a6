"""Security providers: credentials for transports, who a peer is, who may do what.

A provider answers five questions for the processes of one participant:

- `credentials(identity)`: the TLS material its transports present (None:
  plaintext);
- `admit(certificate, name)`: a link whose transport proved `certificate`
  (the peer's verified certificate, DER; None without mutual TLS) claims
  the cell `name`. The provider says who the peer is, or refuses: this is
  where a certificate's name is bound to the cells it may be;
- `authorize(actor, action, owner)`: why `actor` may not perform `action`
  (on a job `owner` submitted), or "" when it may;
- `sign(data)` / `verify(data, signature)`: who vouches for a job package
  or an admin's request, in a form any other participant can check without
  trusting whoever relayed it;
- `revoked(identity)`: whether an identity admitted earlier has lost its
  trust since (its links are then closed).

The `none` provider (simulator, POC) gives no credentials, proves no names
(POC proves them with shared secrets instead, see `fl_core.credentials`),
allows every action and signs nothing. The `pki` provider (production)
reads a participant's startup kit (see `fl_core.pki`).

Every method may be called from several threads at once. None of them may
block on the network; reading a kit's files (and reloading a revocation
list when it changed) is fine.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

from fl_core.errors import CellError, FlCoreError
from fl_core.spec import Register, hookspec

__all__ = [
    "AdmissionRefused",
    "Credentials",
    "Identity",
    "SecurityHookSpecs",
    "SecurityProvider",
    "Signature",
    "SignatureError",
    "admin_cell_prefix",
]


@dataclass(frozen=True, slots=True)
class Credentials:
    """PEM-encoded material for a TLS endpoint.

    `root_certificates` are the CAs whose certificates this end accepts from
    its peers. Empty `certificate_chain` and `private_key` mean this end
    presents no certificate: it can connect to a listener that does not ask
    for one, but cannot listen itself.
    """

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a participant proved to be.

    `name` is the certificate's common name (a site's name, the server's
    host name, an admin's email); without certificates it is the cell name
    the peer proved a secret for. `role` is `server`, `site`, or an admin's
    role (`project_admin`, `org_admin`, `lead`, `member`); `serial` is the
    certificate's serial number (0 without one).
    """

    name: str
    org: str = ""
    role: str = ""
    serial: int = 0

    def __str__(self) -> str:
        details = ", ".join(part for part in (self.org, self.role) if part)
        return f"{self.name} ({details})" if details else self.name


@dataclass(frozen=True, slots=True)
class Signature:
    """A signature over some bytes and the certificate (PEM) that checks it."""

    certificate: bytes
    value: bytes


def admin_cell_prefix(name: str) -> str:
    """The cell name every admin cell of the certificate named `name` starts with.

    An admin's certificate grants this name and names under it followed by
    `-` (one per session): `admin-<16 hex digits of SHA-256(name)>`. A hash,
    because an email address is not a valid cell name.
    """
    return "admin-" + hashlib.sha256(name.encode()).hexdigest()[:16]


class AdmissionRefused(CellError):
    """A link may not join under the name it claims; the message says why."""


class SignatureError(FlCoreError):
    """A signature is missing, malformed, does not match, or its signer is not trusted."""


class SecurityProvider(ABC):
    """Gives transports their credentials and decides who is who and who may do what."""

    proves_names: bool = False
    """True when `admit` proves every cell name from certificates, so the
    shared secrets of a POC (admin and site secrets) are not needed."""

    @abstractmethod
    def credentials(self, identity: str) -> Credentials | None:
        """The credentials for the cell named `identity`; None means plaintext."""

    @abstractmethod
    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        """Why `actor` may not perform `action`, or "" when it may.

        `owner` is who submitted the job the action is about (None for
        actions on the whole federation or site). A refusal names the right
        that was missing, e.g. "role 'member' has no right 'submit_job'".
        """

    def admit(self, certificate: bytes | None, name: str) -> Identity:
        """Who the peer claiming cell `name` is; raises `AdmissionRefused` to refuse.

        `certificate` is the peer's certificate (DER) as its transport
        verified it during the TLS handshake, or None when the link has no
        mutual TLS. The default proves nothing and names the peer by the
        cell it claims: right only for providers that give no credentials.
        """
        return Identity(name)

    def identity(self) -> Identity | None:
        """Who this participant is (its own certificate), or None without one."""
        return None

    def sign(self, data: bytes) -> Signature | None:
        """This participant's signature over `data`; None when it signs nothing."""
        return None

    def verify(self, data: bytes, signature: Signature | None) -> Identity | None:
        """Who signed `data`; raises `SignatureError` saying why it is not trusted.

        The default (a provider that signs nothing) trusts nothing it would
        have to check: it returns None for a missing signature and refuses
        one it cannot verify.
        """
        if signature is not None:
            raise SignatureError("this security provider cannot verify signatures")
        return None

    def revoked(self, identity: Identity) -> bool:
        """Whether `identity`, admitted earlier, is no longer trusted (default False)."""
        return False


class SecurityHookSpecs:
    """Hooks for security plugins."""

    @hookspec
    def fl_core_register_security_providers(self, register: Register) -> None:
        """Register security-provider factories.

        `factory(**options)` must return a `SecurityProvider`. Do not read key
        files here: read them when the factory is called. In production mode
        the container passes `kit=PATH`, the participant's startup kit.
        """
