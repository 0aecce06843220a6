"""Registers the `pki` security provider (production: a participant's startup kit).

Import-light: `cryptography` and the kit are read only when the factory is
called, as the spec asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fl_core.spec import Register, hookimpl

if TYPE_CHECKING:
    from fl_plugins.security_pki.provider import PkiSecurity


def _make_pki(**options: Any) -> PkiSecurity:
    from fl_plugins.security_pki.provider import from_options

    return from_options(options)


@hookimpl
def fl_core_register_security_providers(register: Register) -> None:
    """Provide `pki`."""
    register("pki", _make_pki)
