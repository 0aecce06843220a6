"""Security providers: credentials for transports and authorization of actions.

The `none` provider (simulator) returns no credentials and allows every
action; a PKI provider (production) loads a site's startup kit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from fl_core.spec import Register, hookspec


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


class SecurityProvider(ABC):
    """Gives transports their credentials and decides who may do what."""

    @abstractmethod
    def credentials(self, identity: str) -> Credentials | None:
        """The credentials for the cell named `identity`; None means plaintext."""

    @abstractmethod
    def authorize(self, actor: str, action: str, resource: str) -> bool:
        """Whether `actor` (an identity) may perform `action` on `resource`."""


class SecurityHookSpecs:
    """Hooks for security plugins."""

    @hookspec
    def fl_core_register_security_providers(self, register: Register) -> None:
        """Register security-provider factories.

        `factory(**options)` must return a `SecurityProvider`. Do not read key
        files here: read them when the factory is called.
        """
