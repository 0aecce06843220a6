"""The production container: provisioned PKI, mutual TLS, processes across machines.

It wires the same roles as POC (`ProcessContainer`); what differs is the
security provider and the default transport. Until provisioning lands its
runner refuses with `ModeNotAvailableError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.config.federation import FederationConfig
from fl_core.containers.base import DEFAULT_LAUNCHER, not_available
from fl_core.containers.poc import ProcessContainer, process_container

DEFAULTS: Mapping[str, ComponentChoice] = {
    "transport": ComponentChoice("grpc", {}),
    "security": ComponentChoice("pki", {}),
    "launcher": ComponentChoice(DEFAULT_LAUNCHER, {}),
}


class ProductionContainer(ProcessContainer):
    """Wires a production federation."""

    runner = providers.Factory(
        not_available(
            "production", "provisioning and mutual TLS are not built yet; use --mode simulator"
        )
    )


def production_container(
    job: JobConfig | None = None, *, federation: FederationConfig | None = None, **run: Any
) -> ProductionContainer:
    """A container for a production process (see `fl_core.containers.poc.poc_container`)."""
    return process_container(ProductionContainer, "production", DEFAULTS, job, federation, run)
