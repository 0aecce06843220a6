"""The container every mode shares: configuration, plugin manager, registry, plugin slots.

Slots are filled from the registry by the names in the configuration; the
configuration is the mode's defaults overlaid with the job's `components`.
Tests override a slot with `container.transport.override(...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dependency_injector import containers, providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.errors import ModeNotAvailableError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec import ComponentKind
from fl_core.spec.security import SecurityProvider
from fl_core.spec.transport import Transport
from fl_core.spec.workflow import Workflow


def build_component(
    registry: Registry, kind: str, name: str, options: Mapping[str, Any] | None
) -> Any:
    """Create the component `name` of `kind`, checked against its interface."""
    expect: dict[str, type] = {
        ComponentKind.TRANSPORT: Transport,
        ComponentKind.SECURITY: SecurityProvider,
    }
    return registry.create(kind, name, options or {}, expect=expect.get(kind))


def build_workflow(
    registry: Registry,
    name: str,
    options: Mapping[str, Any] | None,
    min_clients: int,
    rounds: int,
) -> Workflow:
    """Create the job's workflow from its name, options and top-level arguments."""
    workflow = registry.create(
        ComponentKind.WORKFLOW,
        name,
        {**(options or {}), "min_clients": min_clients, "rounds": rounds},
        expect=Workflow,
    )
    assert isinstance(workflow, Workflow)
    return workflow


def _registry(pm: Any) -> Registry:
    registry = pm.registry()
    assert isinstance(registry, Registry)
    return registry


class BaseContainer(containers.DeclarativeContainer):
    """Wiring shared by the simulator, poc and production containers."""

    config = providers.Configuration(strict=True)

    plugin_manager = providers.Singleton(make_plugin_manager)
    registry = providers.Singleton(_registry, plugin_manager)

    transport = providers.Factory(
        build_component,
        registry,
        ComponentKind.TRANSPORT.value,
        config.components.transport.name,
        config.components.transport.options,
    )
    security = providers.Factory(
        build_component,
        registry,
        ComponentKind.SECURITY.value,
        config.components.security.name,
        config.components.security.options,
    )
    workflow = providers.Factory(
        build_workflow,
        registry,
        config.workflow.name,
        config.workflow.options,
        config.job.min_clients,
        config.job.rounds,
    )


def not_available(mode: str, reason: str) -> Callable[..., Any]:
    """A runner factory for a mode whose runtime is not built yet: it refuses clearly."""

    def refuse(**_: Any) -> Any:
        raise ModeNotAvailableError(mode, reason)

    return refuse


def settings(
    job: JobConfig,
    defaults: Mapping[str, str],
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The configuration a mode's container loads: defaults, then the job's choices."""
    components: dict[str, dict[str, Any]] = {}
    for kind, default in defaults.items():
        choice = job.components.get(kind, ComponentChoice(default, {}))
        components[kind] = {"name": choice.name, "options": dict(choice.options)}
    for kind, choice in job.components.items():
        components.setdefault(kind, {"name": choice.name, "options": dict(choice.options)})
    return {
        "components": components,
        "workflow": {"name": job.workflow.name, "options": dict(job.workflow.options)},
        "job": {"min_clients": job.min_clients, "rounds": job.rounds},
        "run": dict(run),
    }
