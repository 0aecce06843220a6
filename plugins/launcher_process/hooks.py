"""Registers the `process` launcher."""

from __future__ import annotations

from typing import Any

from fl_core.spec import Register, hookimpl
from fl_core.spec.launcher import Launcher

_OPTIONS = {"start_timeout": float, "python": str}
"""What a job config may set (YAML types); see `ProcessLauncher`."""


def _make_process(**options: Any) -> Launcher:
    from fl_core.config.options import check_options

    check_options("launcher", "process", options, _OPTIONS)
    from fl_plugins.launcher_process.launcher import ProcessLauncher

    return ProcessLauncher(**options)


@hookimpl
def fl_core_register_launchers(register: Register) -> None:
    """Provide `process`: each job a local process group, killed if its parent dies."""
    register("process", _make_process)
