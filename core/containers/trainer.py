"""The training process's container: the PASSIVE end of its pipe.

A training script's `flare.init()` (`fl_core.client`) is the process's
composition root: it reads what its client job sent in `FL_CORE_PIPE` and
asks this container for the pipe, handed the maker of transports by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_core.containers.base import BaseContainer
from fl_core.spec.pipe import Pipe


class TrainerContainer(BaseContainer):
    """Wires a training process: the pipe named by its client job."""


def trainer_pipe(name: str, options: Mapping[str, Any]) -> Pipe:
    """The pipe `name` built with `options`, as the client job said to build it."""
    container = TrainerContainer()
    container.config.from_dict(
        {
            "components": {"pipe": {"name": name, "options": dict(options)}},
            "run": {"mode": "trainer", "identity": ""},
        }
    )
    pipe = container.pipe()
    assert isinstance(pipe, Pipe)
    return pipe
