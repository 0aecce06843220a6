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

from collections.abc import Callable, Mapping
from typing import Any

from dependency_injector import containers, providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.errors import ModeNotAvailableError
from fl_core.plugins import PluginManager, Registry, make_plugin_manager
from fl_core.roles.client_job.executors import build_executor
from fl_core.spec import ComponentKind
from fl_core.spec.launcher import Launcher
from fl_core.spec.pipe import Pipe, TransportMaker
from fl_core.spec.security import SecurityProvider
from fl_core.spec.transport import Transport
from fl_core.spec.workflow import Workflow

DEFAULT_LAUNCHER = "process"
"""What starts training processes when the job names no launcher."""


def build_component(
    registry: Registry, kind: str, name: str, options: Mapping[str, Any] | None
) -> Any:
    """Create the component `name` of `kind`, checked against the kind's interface."""
    expect: dict[str, type] = {
        ComponentKind.TRANSPORT: Transport,
        ComponentKind.SECURITY: SecurityProvider,
        ComponentKind.LAUNCHER: Launcher,
        ComponentKind.PIPE: Pipe,
        ComponentKind.WORKFLOW: Workflow,
    }
    return registry.create(kind, name, options or {}, expect=expect.get(kind))


def build_transport(
    registry: Registry,
    name: str,
    options: Mapping[str, Any] | None,
    security: SecurityProvider,
    identity: str,
) -> Transport:
    """The transport `name`, presenting the security provider's credentials for `identity`.

    A provider without credentials (`none`) leaves the transport plaintext,
    and the transport is not handed a `credentials` option at all, so a
    transport that knows no TLS still builds.
    """
    settings = dict(options or {})
    credentials = security.credentials(identity)
    if credentials is not None:
        settings["credentials"] = credentials
    transport = build_component(registry, ComponentKind.TRANSPORT, name, settings)
    assert isinstance(transport, Transport)
    return transport


def transport_maker(registry: Registry) -> TransportMaker:
    """Makes transports by name from `registry`: what pipes are handed (`Pipe.use_transports`)."""

    def make(name: str, options: Mapping[str, Any]) -> Transport:
        transport = build_component(registry, ComponentKind.TRANSPORT, name, options)
        assert isinstance(transport, Transport)
        return transport

    return make


def build_pipe(
    registry: Registry, name: str, options: Mapping[str, Any] | None, transports: TransportMaker
) -> Pipe:
    """A fresh pipe `name`, already handed the maker of transports."""
    pipe = build_component(registry, ComponentKind.PIPE, name, options)
    assert isinstance(pipe, Pipe)
    pipe.use_transports(transports)
    return pipe


def build_workflow(
    registry: Registry,
    name: str,
    options: Mapping[str, Any] | None,
    min_clients: int,
    rounds: int,
) -> Workflow:
    """Create the job's workflow from its name, options and top-level arguments."""
    workflow = build_component(
        registry,
        ComponentKind.WORKFLOW,
        name,
        {**(options or {}), "min_clients": min_clients, "rounds": rounds},
    )
    assert isinstance(workflow, Workflow)
    return workflow


class HookEvents:
    """The notification hooks, called through pluggy, for roles that fire them."""

    def __init__(self, pm: PluginManager) -> None:
        self._hook = pm.hook

    def job_started(self, *, job_id: str, mode: str) -> None:
        """Fire `fl_core_job_started`; a hook's exception propagates and fails the job."""
        self._hook.fl_core_job_started(job_id=job_id, mode=mode)

    def job_finished(self, *, job_id: str, mode: str, status: str, reason: str) -> None:
        """Fire `fl_core_job_finished`; a hook's exception is logged, not raised."""
        try:
            self._hook.fl_core_job_finished(job_id=job_id, mode=mode, status=status, reason=reason)
        except Exception:
            import logging

            logging.getLogger(__name__).exception("a fl_core_job_finished hook failed")


def _registry(pm: Any) -> Registry:
    registry = pm.registry()
    assert isinstance(registry, Registry)
    return registry


class BaseContainer(containers.DeclarativeContainer):
    """Wiring shared by every mode: one slot per plugin kind, plus events and executors."""

    config = providers.Configuration(strict=True)
    job = providers.Dependency(instance_of=JobConfig)

    plugin_manager = providers.Singleton(make_plugin_manager)
    registry = providers.Singleton(_registry, plugin_manager)
    events = providers.Singleton(HookEvents, plugin_manager)

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


def not_available(mode: str, reason: str) -> Callable[..., Any]:
    """A runner factory for a mode whose runtime is not built yet: it refuses clearly."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise ModeNotAvailableError(mode, reason)

    return refuse


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
