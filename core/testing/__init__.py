"""What a plugin author uses to test a plugin in isolation.

    from fl_core.testing import plugin_manager_with, simulator_for, write_job

    def test_my_transport_registers():
        pm = plugin_manager_with("my_plugin", my_plugin.hooks)
        assert "mytcp" in pm.registry().names("transport")

    def test_my_workflow_in_the_simulator(tmp_path):
        job = write_job(tmp_path, script=SCRIPT, workflow="myflow")
        result = simulator_for(job, clients=3, extra_plugins=[("my_plugin", my_plugin.hooks)]).run()
        assert result.status == "finished"

`simulator_for` builds the real simulator container; pass `overrides` to put
your own object into one slot (`{"transport": MyTransport()}`).

The contract suites, one per plugin kind, build the component through the
plugin's registered factory (`component`, `plugin`; see
`fl_core.testing.registered`): `TransportContract` (with
`SecureTransportContract` and `HostileInputContract`), `PipeContract`,
`LauncherContract`, `WorkflowContract` and `SecurityProviderContract`.
Subclass one as a `Test...` class. They are imported on first use, so
importing this package imports neither pytest nor the runtime.

The pytest fixtures (`fl_job`, `fl_simulator`, `fl_no_threads_left`) come
with fl-core's pytest plugin, which pytest loads by itself
(`fl_core.testing.pytest_plugin`); no conftest is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from fl_core.config import JobConfig
    from fl_core.plugins import PluginManager
    from fl_core.roles.simulator import Simulator
    from fl_core.testing.launcher_contract import LauncherContract
    from fl_core.testing.pipe_contract import PipeContract
    from fl_core.testing.registered import component_factory, pipe_factory
    from fl_core.testing.security_contract import SecurityProviderContract
    from fl_core.testing.stream_contract import StreamContract
    from fl_core.testing.transport_contract import TransportContract
    from fl_core.testing.transport_contract_security import (
        HostileInputContract,
        SecureTransportContract,
    )
    from fl_core.testing.workflow_contract import WorkflowContract

__all__ = [
    "HostileInputContract",
    "LauncherContract",
    "PipeContract",
    "SecureTransportContract",
    "SecurityProviderContract",
    "StreamContract",
    "TransportContract",
    "WorkflowContract",
    "component_factory",
    "pipe_factory",
    "plugin_manager_with",
    "simulator_for",
    "write_job",
]

_LAZY = {
    "HostileInputContract": "fl_core.testing.transport_contract_security",
    "LauncherContract": "fl_core.testing.launcher_contract",
    "PipeContract": "fl_core.testing.pipe_contract",
    "SecureTransportContract": "fl_core.testing.transport_contract_security",
    "SecurityProviderContract": "fl_core.testing.security_contract",
    "StreamContract": "fl_core.testing.stream_contract",
    "TransportContract": "fl_core.testing.transport_contract",
    "WorkflowContract": "fl_core.testing.workflow_contract",
    "component_factory": "fl_core.testing.registered",
    "pipe_factory": "fl_core.testing.registered",
}
"""Names imported on first use: the suites need pytest, and the kit must stay cheap to import."""


def __getattr__(name: str) -> Any:
    """The contract suites and factories of `_LAZY`, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


def plugin_manager_with(name: str, plugin: object, *, with_builtins: bool = False) -> PluginManager:
    """A plugin manager holding only `plugin` (registered as `name`).

    With `with_builtins`, every installed entry-point plugin is loaded too,
    so the plugin can be combined with the built-in transport and workflow.
    """
    from fl_core.plugins import make_plugin_manager

    return make_plugin_manager(autoload=with_builtins, extra=[(name, plugin)])


def write_job(
    folder: Path,
    *,
    script: str,
    name: str = "test-job",
    min_clients: int = 2,
    rounds: int = 2,
    workflow: str | Mapping[str, Any] = "sag",
    initial_params: Mapping[str, np.ndarray] | None = None,
    launch: str = "per_task",
    components: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a job folder (job.yaml, train.py, initial_model.npz) and return it."""
    import numpy as np
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(script)
    config: dict[str, Any] = {
        "name": name,
        "min_clients": min_clients,
        "rounds": rounds,
        "workflow": workflow if isinstance(workflow, str) else dict(workflow),
        "executor": {"script": "train.py", "launch": launch},
    }
    if initial_params is not None:
        np.savez(folder / "initial_model.npz", **dict(initial_params))  # type: ignore[arg-type]
        config["initial_model"] = "initial_model.npz"
    if components:
        config["components"] = dict(components)
    config.update(extra or {})
    (folder / "job.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def simulator_for(
    job: Path | JobConfig,
    *,
    clients: int | None = None,
    threads: int = 2,
    workspace: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
    autoload: bool = True,
) -> Simulator:
    """A `Simulator` from the real simulator container.

    `overrides` maps slot names (`transport`, `security`, `workflow`) to the
    objects to use instead of what the registry would build.
    `extra_plugins` adds (name, module) plugins to the manager.
    """
    from dependency_injector import providers

    from fl_core.config import JobConfig, load_job
    from fl_core.containers.simulator import simulator_container
    from fl_core.plugins import make_plugin_manager

    config = job if isinstance(job, JobConfig) else load_job(job)
    count = clients if clients is not None else config.min_clients
    container = simulator_container(
        config,
        clients=count,
        threads=threads,
        workspace=workspace or config.job_dir.parent / f"{config.name}-workspace",
    )
    extra = list(extra_plugins)
    container.plugin_manager.override(
        providers.Singleton(make_plugin_manager, autoload=autoload, extra=extra)
    )
    for slot, value in (overrides or {}).items():
        getattr(container, slot).override(providers.Object(value))
    return container.runner()
