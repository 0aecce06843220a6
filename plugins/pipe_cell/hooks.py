"""Registers the `cell` pipe."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.pipe import Pipe

_OPTIONS = {
    "url": str,
    "fqcn": str,
    "token": str,
    "transport": str,
    "heartbeat_interval": float,
    "heartbeat_timeout": float,
    "max_payload": int,
}
"""What a job config may set (YAML types); see `CellPipe`. `transport` is any installed
transport's name: the registry (through `use_transports`) knows which are, not this plugin."""


def _make_cell(**options: Any) -> Pipe:
    from fl_core.config.options import check_options

    check_options("pipe", "cell", options, _OPTIONS)
    # fqcn and token may be left out: the client job fills them in (`CellPipe.prepare`).
    from fl_plugins.pipe_cell.pipe import CellPipe

    return CellPipe(**options)


@hookimpl
def fl_core_register_pipes(register: Register) -> None:
    """Provide `cell`: each message a cell request between the client job and its trainer."""
    register("cell", _make_cell)
