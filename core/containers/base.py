"""The container every mode shares: configuration, plugins, and one slot per plugin kind.

A container is a process's composition root: its entry module loads the
configuration, builds the mode's container and asks it for the role's
runner. The container builds the whole object graph; roles are handed
their collaborators and never see the plugin manager.

The configuration a container loads (see `settings`):

    components:              the parts this process uses, by kind: {name, options}
      transport, security    (POC, production: the federation's; simulator: the job's or defaults)
      launcher               what starts the job's training processes (the job's choice)
      pipe                   only when the job names one
    workflow: {name, options}
    job: {min_clients, rounds}
    run: {mode, identity, ...} the process: its mode, the cell name it presents, run options

Tests override a slot with `container.transport.override(...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import containers, providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.config.site import DEFAULT_LAUNCHER
from fl_core.containers.parts import (
    build_component,
    build_pipe,
    build_transport,
    build_workflow,
    registry_of,
    transport_maker,
)
from fl_core.plugins import EventRelay, make_plugin_manager
from fl_core.roles.client_job.executors import build_executor
from fl_core.spec import ComponentKind

__all__ = [
    "DEFAULT_LAUNCHER",
    "BaseContainer",
    "build_component",
    "build_pipe",
    "build_transport",
    "build_workflow",
    "settings",
]


class BaseContainer(containers.DeclarativeContainer):
    """Wiring shared by every mode: one slot per plugin kind, plus events and executors."""

    config = providers.Configuration(strict=True)
    job = providers.Dependency(instance_of=JobConfig)

    plugin_manager = providers.Singleton(make_plugin_manager)
    registry = providers.Singleton(registry_of, plugin_manager)
    events = providers.Singleton(EventRelay, plugin_manager)

    security = providers.Singleton(
        build_component,
        registry,
        ComponentKind.SECURITY.value,
        config.components.security.name,
        config.components.security.options,
    )
    # One transport per process: every cell of it shares the transport's threads.
    transport = providers.Singleton(
        build_transport,
        registry,
        config.components.transport.name,
        config.components.transport.options,
        security,
        config.run.identity,
    )
    transports = providers.Singleton(transport_maker, registry)
    launcher = providers.Factory(
        build_component,
        registry,
        ComponentKind.LAUNCHER.value,
        config.components.launcher.name,
        config.components.launcher.options,
    )
    pipe = providers.Factory(
        build_pipe,
        registry,
        config.components.pipe.name,
        config.components.pipe.options,
        transports,
    )
    workflow = providers.Factory(
        build_workflow,
        registry,
        config.workflow.name,
        config.workflow.options,
        config.job.min_clients,
        config.job.rounds,
    )
    # A factory of executors: the runner adds what exists only once it runs
    # (the job id, the workspace, its log sink and timer).
    executor = providers.Factory(
        build_executor,
        job,
        make_pipe=pipe.provider,
        make_launcher=launcher.provider,
    )


def components(
    job: JobConfig | None,
    defaults: Mapping[str, ComponentChoice],
    fixed: Mapping[str, ComponentChoice] = {},
) -> dict[str, dict[str, Any]]:
    """The parts a process uses: `fixed` ones, then the job's choices, then `defaults`.

    What `fixed` holds (the federation's transport and security) a job
    cannot change; `fl_core.containers.check.check_fixed` refuses a job
    that tries, before it gets here.
    """
    chosen: dict[str, ComponentChoice] = dict(defaults)
    if job is not None:
        chosen.update(job.components)
    chosen.update(fixed)
    return {
        kind: {"name": choice.name, "options": dict(choice.options)}
        for kind, choice in sorted(chosen.items())
    }


def settings(
    job: JobConfig | None,
    defaults: Mapping[str, ComponentChoice],
    run: Mapping[str, Any],
    fixed: Mapping[str, ComponentChoice] = {},
) -> dict[str, Any]:
    """The configuration a mode's container loads (see the module docstring)."""
    data: dict[str, Any] = {
        "components": components(job, defaults, fixed),
        "run": dict(run),
    }
    if job is not None:
        data["workflow"] = {"name": job.workflow.name, "options": dict(job.workflow.options)}
        data["job"] = {"min_clients": job.min_clients, "rounds": job.rounds}
    return data
