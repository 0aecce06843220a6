"""The containers of the process modes: one role per process, across POC and production.

Each process of a federation (server parent, client parent, server job,
client job, admin) starts the same way: its entry module in
`fl_core.processes` loads the federation (and the job), builds this
container with `process_container(...)`, asks it for the role's runner and
runs it. The federation fixes transport, security and the launcher of job
processes; a job adds its workflow, executor, pipe and training launcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dependency_injector import providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.config.federation import FederationConfig
from fl_core.config.site import SiteConfig, load_site_config
from fl_core.containers.base import DEFAULT_LAUNCHER, BaseContainer, build_component, settings
from fl_core.plugins import Registry
from fl_core.roles.admin.client import AdminClient
from fl_core.roles.client_job.process import ClientJob
from fl_core.roles.client_parent.engine import ClientEngine
from fl_core.roles.client_parent.process import ClientParent
from fl_core.roles.server_job.process import ServerJob
from fl_core.roles.server_parent.engine import ServerEngine
from fl_core.roles.server_parent.process import ServerParent
from fl_core.spec import ComponentKind

DEFAULTS: Mapping[str, ComponentChoice] = {
    "transport": ComponentChoice("tcp", {}),
    "security": ComponentChoice("none", {}),
    "launcher": ComponentChoice(DEFAULT_LAUNCHER, {}),
}


def submit_check(
    registry: Registry, mode: str, federation: FederationConfig
) -> Callable[[JobConfig], None]:
    """What a server parent runs at submit: `fl-core job check` against its own plugins."""
    from fl_core.containers.check import check_job

    def check(job: JobConfig) -> None:
        check_job(job, mode, registry, federation)

    return check


def _site_config(federation: FederationConfig, site: str) -> SiteConfig:
    return load_site_config(federation.site_dir(site))


class ProcessContainer(BaseContainer):
    """The roles of a federation's processes, wired from the federation and the job."""

    federation = providers.Dependency(instance_of=FederationConfig)

    # What starts server and client job processes: the federation's choice.
    job_launcher = providers.Singleton(
        build_component,
        BaseContainer.registry,
        ComponentKind.LAUNCHER.value,
        BaseContainer.config.federation.launcher.name,
        BaseContainer.config.federation.launcher.options,
    )
    check = providers.Factory(
        submit_check, BaseContainer.registry, BaseContainer.config.run.mode, federation
    )

    server_engine = providers.Factory(
        ServerEngine,
        federation,
        BaseContainer.transport,
        job_launcher,
        check_job=check,
        security=BaseContainer.security,
    )
    server_parent = providers.Factory(ServerParent, server_engine)

    site_config = providers.Singleton(_site_config, federation, BaseContainer.config.run.site)
    client_engine = providers.Factory(
        ClientEngine,
        federation,
        BaseContainer.config.run.site,
        BaseContainer.transport,
        job_launcher,
        site_config=site_config,
        security=BaseContainer.security,
    )
    client_parent = providers.Factory(
        ClientParent,
        federation,
        BaseContainer.config.run.site,
        engines=client_engine.provider,
        transport=BaseContainer.transport,
    )

    server_job = providers.Factory(
        ServerJob,
        federation,
        BaseContainer.job,
        transport=BaseContainer.transport,
        workflow=BaseContainer.workflow,
        events=BaseContainer.events,
        mode=BaseContainer.config.run.mode,
        security=BaseContainer.security,
    )
    client_job = providers.Factory(
        ClientJob,
        federation,
        BaseContainer.job,
        transport=BaseContainer.transport,
        executors=BaseContainer.executor.provider,
        security=BaseContainer.security,
    )

    admin_client = providers.Factory(
        AdminClient,
        federation,
        transports=BaseContainer.transport.provider,
        security=BaseContainer.security,
    )


class PocContainer(ProcessContainer):
    """Wires a POC federation: real processes on one machine."""


def fixed_components(federation: FederationConfig | None) -> dict[str, ComponentChoice]:
    """What the federation fixes for every job: its transport and security (none without one)."""
    if federation is None:
        return {}
    return {"transport": federation.transport, "security": federation.security}


def process_settings(
    federation: FederationConfig | None,
    job: JobConfig | None,
    mode: str,
    run: Mapping[str, Any],
    defaults: Mapping[str, ComponentChoice] = DEFAULTS,
) -> dict[str, Any]:
    """The configuration of a process container (see `fl_core.containers.base`)."""
    data = settings(
        job, defaults, {"mode": mode, "identity": "", **run}, fixed_components(federation)
    )
    launcher = federation.launcher if federation is not None else defaults["launcher"]
    data["federation"] = {"launcher": {"name": launcher.name, "options": dict(launcher.options)}}
    return data


_C = TypeVar("_C", bound=ProcessContainer)


def process_container(
    cls: type[_C],
    mode: str,
    defaults: Mapping[str, ComponentChoice],
    job: JobConfig | None,
    federation: FederationConfig | None,
    run: Mapping[str, Any],
) -> _C:
    """A `cls` container for one process of `federation` (and `job`), in `mode`."""
    container = cls()
    if job is not None:
        container.job.override(providers.Object(job))
    if federation is not None:
        container.federation.override(providers.Object(federation))
    container.config.from_dict(process_settings(federation, job, mode, run, defaults))
    return container


def poc_container(
    job: JobConfig | None = None, *, federation: FederationConfig | None = None, **run: Any
) -> PocContainer:
    """A container for a POC process; `run` holds its `identity` (cell name) and `site`."""
    return process_container(PocContainer, "poc", DEFAULTS, job, federation, run)


def admin_client(federation: FederationConfig, **options: Any) -> AdminClient:
    """An admin client of `federation`, wired by its mode's container (`fl-core job ...`)."""
    from fl_core.containers.production import federation_container

    container = federation_container(federation, identity="admin")
    client = container.admin_client(**options)
    assert isinstance(client, AdminClient)
    return client
