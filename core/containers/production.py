"""The production container: provisioned PKI, mutual TLS, processes across machines.

Its runtime lands with the production issue; until then its runner refuses
with `ModeNotAvailableError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import providers

from fl_core.config import JobConfig
from fl_core.containers.base import BaseContainer, not_available, settings

DEFAULTS: Mapping[str, str] = {"transport": "grpc", "launcher": "process", "security": "pki"}


class ProductionContainer(BaseContainer):
    """Wires a production federation."""

    job = providers.Dependency(instance_of=JobConfig)
    runner = providers.Factory(
        not_available(
            "production", "provisioning and mutual TLS are not built yet; use --mode simulator"
        ),
        job=job,
    )


def production_container(job: JobConfig, **run: Any) -> ProductionContainer:
    """A container for `job` in production mode."""
    container = ProductionContainer(job=job)
    container.config.from_dict(settings(job, DEFAULTS, run))
    return container
