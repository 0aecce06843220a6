"""The checks of `fl-core job check`, in one place: the CLI runs them, and so does submit.

A job passes when every plugin it names is installed for the mode, and each
builds with the options the job gives it (workflow, pipe, launcher). Nothing
is started.
"""

from __future__ import annotations

from dependency_injector import providers

from fl_core.config import JobConfig
from fl_core.plugins import Registry

MODES = ("simulator", "poc", "production")
"""The modes a job can be checked for."""


def check_job(job: JobConfig, mode: str = "poc", registry: Registry | None = None) -> None:
    """Raise the first `ConfigError` / `UnknownComponentError` that running `job` in `mode` would.

    `registry` is the plugins to check against (a server parent's own); by
    default, the plugins installed here.
    """
    from fl_core.containers.poc import poc_container
    from fl_core.containers.production import production_container
    from fl_core.containers.simulator import simulator_container
    from fl_core.runtime.executors import check_executor

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
    for kind, choice in sorted(container.config.components().items()):
        plugins.check_available(kind, choice["name"])
    plugins.check_available("workflow", job.workflow.name)
    container.workflow()  # the workflow validates its own options
    check_executor(job, plugins)  # a pipe's and a launcher's options
