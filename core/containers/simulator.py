"""The simulator container: a whole federation in one process.

The transport is the job's choice (`components: {transport: tcp}`), or the
in-process one: with `tcp` or `grpc` (or any installed transport) the whole
simulated federation runs over real loopback sockets, which is how a
transport's author tries it end to end in one command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.containers.base import DEFAULT_LAUNCHER, BaseContainer, settings
from fl_core.roles.server_job.runner import EventSink
from fl_core.roles.simulator import Simulator

DEFAULTS: Mapping[str, ComponentChoice] = {
    "transport": ComponentChoice("inprocess", {}),
    "security": ComponentChoice("none", {}),
    "launcher": ComponentChoice(DEFAULT_LAUNCHER, {}),
}


class SimulatorContainer(BaseContainer):
    """Wires a `Simulator` from the job config and the plugins it names."""

    on_event: providers.Object[EventSink | None] = providers.Object(None)

    runner = providers.Factory(
        Simulator,
        BaseContainer.job,
        transport=BaseContainer.transport,
        scheme=BaseContainer.config.components.transport.name,
        workflow=BaseContainer.workflow,
        executors=BaseContainer.executor.provider,
        events=BaseContainer.events,
        clients=BaseContainer.config.run.clients,
        threads=BaseContainer.config.run.threads,
        workspace=BaseContainer.config.run.workspace,
        on_event=on_event,
    )


def simulator_container(job: JobConfig, **run: Any) -> SimulatorContainer:
    """A container for `job`; `run` holds clients, threads and workspace."""
    container = SimulatorContainer(job=job)
    run = {"mode": "simulator", "identity": "server", **run}
    container.config.from_dict(settings(job, DEFAULTS, run))
    return container
