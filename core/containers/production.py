"""The production container: startup kits, PKI, mutual TLS, processes across machines.

It wires the same roles as POC (`ProcessContainer`); what differs is the
security provider, which is built from the participant's startup kit (the
folder of its `federation.yaml`, handed to the provider as `kit`), and the
default transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fl_core.config import ComponentChoice, JobConfig
from fl_core.config.federation import FederationConfig
from fl_core.containers.base import DEFAULT_LAUNCHER
from fl_core.containers.poc import ProcessContainer, poc_container, process_container

DEFAULTS: Mapping[str, ComponentChoice] = {
    "transport": ComponentChoice("grpc", {}),
    "security": ComponentChoice("pki", {}),
    "launcher": ComponentChoice(DEFAULT_LAUNCHER, {}),
}


class ProductionContainer(ProcessContainer):
    """Wires a production federation."""


def from_kit(federation: FederationConfig) -> FederationConfig:
    """`federation` with its security provider pointed at the kit it was read from."""
    security = federation.security
    options = {"kit": str(federation.root), **security.options}
    return replace(federation, security=ComponentChoice(security.name, options))


def production_container(
    job: JobConfig | None = None, *, federation: FederationConfig | None = None, **run: Any
) -> ProductionContainer:
    """A container for a production process (see `fl_core.containers.poc.poc_container`)."""
    kit = from_kit(federation) if federation is not None else None
    return process_container(ProductionContainer, "production", DEFAULTS, job, kit, run)


def federation_container(
    federation: FederationConfig, job: JobConfig | None = None, **run: Any
) -> ProcessContainer:
    """The container of the mode `federation` names (`mode: production` in a kit)."""
    if federation.mode == "production":
        return production_container(job, federation=federation, **run)
    return poc_container(job, federation=federation, **run)
