"""The training process's container: the PASSIVE end of its pipe.

A training script's `flare.init()` (`fl_core.client`) is the process's
composition root: it reads what its client job sent in `FL_CORE_PIPE` and
asks this container for the pipe, handed the maker of transports by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dependency_injector import containers, providers

from fl_core.containers.parts import build_pipe, registry_of, transport_maker
from fl_core.plugins import make_plugin_manager
from fl_core.spec.pipe import Pipe


class TrainerContainer(containers.DeclarativeContainer):
    """Wires a training process: the pipe named by its client job.

    Its own small container, not `BaseContainer`: a training process starts
    per task in some jobs, so it imports no role it does not run.
    """

    config = providers.Configuration(strict=True)
    plugin_manager = providers.Singleton(make_plugin_manager)
    registry = providers.Singleton(registry_of, plugin_manager)
    transports = providers.Singleton(transport_maker, registry)
    pipe = providers.Factory(
        build_pipe,
        registry,
        config.components.pipe.name,
        config.components.pipe.options,
        transports,
    )


def trainer_pipe(name: str, options: Mapping[str, Any]) -> Pipe:
    """The pipe `name` built with `options`, as the client job said to build it."""
    container = TrainerContainer()
    container.config.from_dict(
        {
            "components": {"pipe": {"name": name, "options": dict(options)}},
        }
    )
    pipe = container.pipe()
    assert isinstance(pipe, Pipe)
    return pipe
