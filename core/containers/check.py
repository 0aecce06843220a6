"""The checks of `fl-core job check`, in one place: the CLI runs them, and so does submit.

A job passes when every plugin it names is installed for the mode, each
builds with the options the job gives it (workflow, pipe, launcher), and,
in POC and production, it leaves the federation's transport and security
alone. Nothing is started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from dependency_injector import providers

from fl_core.config import ComponentChoice, JobConfig
from fl_core.config._checks import ConfigErrors
from fl_core.config.federation import FederationConfig
from fl_core.errors import ConfigError, FlCoreError
from fl_core.plugins import Registry

MODES = ("simulator", "poc", "production")
"""The modes a job can be checked for."""

FIXED_BY_FEDERATION = ("transport", "security")
"""What a job may not choose in POC and production: the federation's parts."""


class JobCheckErrors(FlCoreError):
    """Several problems with a job's plugins; `errors` holds each, one line apiece."""

    def __init__(self, errors: list[FlCoreError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def check_fixed(
    job: JobConfig, fixed: Mapping[str, ComponentChoice], where: str
) -> list[ConfigError]:
    """A job that names a transport or security other than the federation's is refused.

    Naming the federation's own (with no options, or the same) is allowed;
    `where` says where the federation's choice comes from.
    """
    errors = []
    for kind in FIXED_BY_FEDERATION:
        mine, theirs = job.components.get(kind), fixed.get(kind)
        if mine is None or theirs is None:
            continue
        if mine.name != theirs.name or (mine.options and mine.options != theirs.options):
            errors.append(
                ConfigError(
                    str(job.source),
                    f"components.{kind}",
                    f"the federation fixes the {kind} ({theirs.name!r}, {where}); a job may "
                    f"not choose {mine.name!r}: leave components.{kind} out",
                )
            )
    return errors


def check_job(
    job: JobConfig,
    mode: str = "poc",
    registry: Registry | None = None,
    federation: FederationConfig | None = None,
) -> None:
    """Raise what running `job` in `mode` would: `ConfigError`, `UnknownComponentError`...

    Every component is checked; one problem is raised as it is, several as
    `JobCheckErrors`. `registry` is the plugins to check against (a server
    parent's own); by default, the plugins installed here. `federation` is
    the one the job would run in (POC, production): the job must leave its
    transport and security alone. Without one, the job's own choices stand,
    as in `fl-core run --mode poc`, which makes a federation for the job.
    """
    from fl_core.containers.base import BaseContainer
    from fl_core.containers.poc import fixed_components, poc_container
    from fl_core.containers.production import production_container
    from fl_core.containers.simulator import simulator_container
    from fl_core.roles.client_job.executors import check_executor

    container: BaseContainer
    if mode == "simulator":
        container = simulator_container(job)
    elif mode == "poc":
        container = poc_container(job, federation=federation)
    else:
        container = production_container(job, federation=federation)
    if registry is not None:
        container.registry.override(providers.Object(registry))
    plugins = container.registry()
    errors: list[FlCoreError] = []

    def attempt(check: Callable[[], object]) -> bool:
        try:
            check()
        except ConfigErrors as exc:
            errors.extend(exc.errors)
        except FlCoreError as exc:
            errors.append(exc)
        else:
            return True
        return False

    for kind, choice in sorted(job.components.items()):
        attempt(partial(plugins.check_available, kind, choice.name))
    if federation is not None and not errors:
        errors.extend(check_fixed(job, fixed_components(federation), str(federation.source)))
    for kind, made in sorted(container.config.components().items()):
        if kind not in job.components:
            attempt(partial(plugins.check_available, kind, str(made["name"])))
    if attempt(lambda: plugins.check_available("workflow", job.workflow.name)):
        attempt(container.workflow)  # the workflow validates its own options
    if not errors:
        # A pipe's and a launcher's options, once they exist.
        check_executor(job, container.pipe, container.launcher)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise JobCheckErrors(errors)
