"""The checks of `fl-core job check`, in one place: the CLI runs them, and so does submit.

A job passes when every plugin it names is installed for the mode, and each
builds with the options the job gives it (workflow, pipe, launcher). Nothing
is started.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from dependency_injector import providers

from fl_core.config import JobConfig
from fl_core.config._checks import ConfigErrors
from fl_core.errors import FlCoreError
from fl_core.plugins import Registry

MODES = ("simulator", "poc", "production")
"""The modes a job can be checked for."""


class JobCheckErrors(FlCoreError):
    """Several problems with a job's plugins; `errors` holds each, one line apiece."""

    def __init__(self, errors: list[FlCoreError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def check_job(job: JobConfig, mode: str = "poc", registry: Registry | None = None) -> None:
    """Raise what running `job` in `mode` would: `ConfigError`, `UnknownComponentError`...

    Every component is checked; one problem is raised as it is, several as
    `JobCheckErrors`. `registry` is the plugins to check against (a server
    parent's own); by default, the plugins installed here.
    """
    from fl_core.containers.poc import poc_container
    from fl_core.containers.production import production_container
    from fl_core.containers.simulator import simulator_container
    from fl_core.roles.client_job.executors import check_executor

    factory = {
        "simulator": simulator_container,
        "poc": poc_container,
        "production": production_container,
    }[mode]
    container = factory(job)
    if registry is not None:
        container.registry.override(providers.Object(registry))
    if mode == "production":
        container.runner()  # refuses clearly until the mode is built
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

    for kind, choice in sorted(container.config.components().items()):
        name = str(choice["name"])
        attempt(partial(plugins.check_available, kind, name))
    if attempt(lambda: plugins.check_available("workflow", job.workflow.name)):
        attempt(container.workflow)  # the workflow validates its own options
    if not errors:
        check_executor(job, plugins)  # a pipe's and a launcher's options, once they exist
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise JobCheckErrors(errors)
