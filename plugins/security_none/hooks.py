"""Registers the `none` security provider."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.security import Credentials, Identity, SecurityProvider


class NoSecurity(SecurityProvider):
    """Plaintext links and no authorization checks: for the simulator and local tests."""

    def credentials(self, identity: str) -> Credentials | None:
        return None

    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        return ""


def _make_none(**options: Any) -> NoSecurity:
    if options:
        from fl_core.errors import ConfigError

        raise ConfigError(
            "job.yaml",
            f"components.security.options.{sorted(options)[0]}",
            "`none` takes no options",
        )
    return NoSecurity()


@hookimpl
def fl_core_register_security_providers(register: Register) -> None:
    """Provide `none`."""
    register("none", _make_none)
