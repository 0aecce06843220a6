"""What a plugin implements: hookspecs and the interfaces of the five plugin kinds.

A plugin is a module (its `hooks.py`) that implements some of the hooks below
with `@fl_core.spec.hookimpl`. It is found through the entry-point group
`fl_core`; the entry-point name is the plugin's name. Registration hooks hand
the plugin a `register` callable; the plugin calls it once per component:

    from fl_core.spec import hookimpl

    @hookimpl
    def fl_core_register_transports(register):
        register("mytcp", make_mytcp, requires=("mylib",), install="pip install mylib")

Each time a registry is built, every registration hook is called through
pluggy once per plugin that implements it, with a `register` that belongs to
that plugin (so each component is attributed to the plugin that gave it).
Because the calls go through pluggy, `tryfirst`/`trylast` order the plugins,
a wrapper (`@hookimpl(wrapper=True)`) sees each plugin's call, and
`pm.trace` / `pm.add_hookcall_monitoring` see them all. The kinds, with
their hooks and interfaces, are listed in `fl_core.spec.kinds.KINDS`.

Importing this package never imports the runtime.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pluggy

PROJECT = "fl_core"
"""The pluggy project name, the entry-point group and the hook prefix."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ComponentKind(enum.StrEnum):
    """The five kinds of component a plugin can contribute."""

    TRANSPORT = "transport"
    LAUNCHER = "launcher"
    WORKFLOW = "workflow"
    PIPE = "pipe"
    SECURITY = "security"


class Register(Protocol):
    """The callable a registration hook receives.

    `name` is what a job config writes (`transport: tcp`); it must be unique per
    kind across all installed plugins. `factory(**options)` builds the
    component from the options the config gives; it is called only when a job
    uses the component, so heavy imports belong inside it. `requires` lists
    modules the factory imports; if one is missing, using the component raises
    `MissingDependencyError` with `install` as the fix to show.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        requires: Sequence[str] = (),
        install: str = "",
    ) -> None: ...


__all__ = ["PROJECT", "ComponentKind", "Register", "hookimpl", "hookspec"]
