"""Registers the `file` pipe."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.pipe import Pipe

_OPTIONS = {
    "root": str,
    "heartbeat_interval": float,
    "heartbeat_timeout": float,
    "max_payload": int,
}
"""What a job config may set (YAML types); see `FilePipe`."""


def _make_file(**options: Any) -> Pipe:
    from fl_core.config.options import check_options

    check_options("pipe", "file", options, _OPTIONS)
    # root may be left out: the client job gives a folder of its own (`FilePipe.prepare`).
    from fl_plugins.pipe_file.pipe import FilePipe

    return FilePipe(**options)


@hookimpl
def fl_core_register_pipes(register: Register) -> None:
    """Provide `file`: each message a file renamed into the peer's inbox folder."""
    register("file", _make_file)
