"""The simulator container: in-process transport, no security, one process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import providers

from fl_core.config import JobConfig
from fl_core.containers.base import BaseContainer, settings
from fl_core.roles.server_job.runner import EventSink
from fl_core.roles.simulator import Simulator

DEFAULTS: Mapping[str, str] = {"transport": "inprocess", "security": "none"}


class SimulatorContainer(BaseContainer):
    """Wires a `Simulator` from the job config and the plugins it names."""

    job = providers.Dependency(instance_of=JobConfig)
    on_event: providers.Object[EventSink | None] = providers.Object(None)

    simulator = providers.Factory(
        Simulator,
        job,
        transport=BaseContainer.transport,
        security=BaseContainer.security,
        workflow=BaseContainer.workflow,
        plugin_manager=BaseContainer.plugin_manager,
        clients=BaseContainer.config.run.clients,
        threads=BaseContainer.config.run.threads,
        workspace=BaseContainer.config.run.workspace,
        on_event=on_event,
    )


def simulator_container(job: JobConfig, **run: Any) -> SimulatorContainer:
    """A container for `job`; `run` holds clients, threads and workspace."""
    container = SimulatorContainer(job=job)
    container.config.from_dict(settings(job, DEFAULTS, run))
    return container
