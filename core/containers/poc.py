"""The POC container: real processes on one machine (server parent, client parents, jobs).

The process runtime lands with the process-model issue; until then its
runner refuses with `ModeNotAvailableError`, while the wiring of plugin
slots already works (a job can be checked against the POC defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import providers

from fl_core.config import JobConfig
from fl_core.containers.base import BaseContainer, not_available, settings

DEFAULTS: Mapping[str, str] = {"transport": "tcp", "launcher": "process", "security": "none"}


class PocContainer(BaseContainer):
    """Wires a POC federation."""

    job = providers.Dependency(instance_of=JobConfig)
    runner = providers.Factory(
        not_available(
            "poc", "separate server and client processes are not built yet; use --mode simulator"
        ),
        job=job,
    )


def poc_container(job: JobConfig, **run: Any) -> PocContainer:
    """A container for `job` in POC mode."""
    container = PocContainer(job=job)
    container.config.from_dict(settings(job, DEFAULTS, run))
    return container
