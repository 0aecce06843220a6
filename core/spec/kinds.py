"""The plugin kinds in one table: each kind's registration hook, interface and hookspecs.

The plugin manager adds every kind's hookspecs from `KINDS`, calls each kind's
`hook` to build the registry, and `Registry.create` checks what a factory
builds against the kind's `interface`. Adding a kind is a member of
`ComponentKind`, a spec module (interface + hookspec class) and one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fl_core.spec import ComponentKind
from fl_core.spec.events import EventHookSpecs
from fl_core.spec.launcher import Launcher, LauncherHookSpecs
from fl_core.spec.pipe import Pipe, PipeHookSpecs
from fl_core.spec.security import SecurityHookSpecs, SecurityProvider
from fl_core.spec.transport import Transport, TransportHookSpecs
from fl_core.spec.workflow import Workflow, WorkflowHookSpecs

__all__ = ["HOOKSPECS", "KINDS", "KindSpec"]


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What the core knows about one plugin kind."""

    hook: str
    """The registration hook, `fl_core_register_<kind>s(register)`."""
    interface: type
    """What every factory of the kind must build (checked by `Registry.create`)."""
    hookspecs: type
    """The class holding the kind's hookspecs (the registration hook among them)."""


KINDS: Mapping[ComponentKind, KindSpec] = MappingProxyType(
    {
        ComponentKind.TRANSPORT: KindSpec(
            "fl_core_register_transports", Transport, TransportHookSpecs
        ),
        ComponentKind.LAUNCHER: KindSpec("fl_core_register_launchers", Launcher, LauncherHookSpecs),
        ComponentKind.WORKFLOW: KindSpec("fl_core_register_workflows", Workflow, WorkflowHookSpecs),
        ComponentKind.PIPE: KindSpec("fl_core_register_pipes", Pipe, PipeHookSpecs),
        ComponentKind.SECURITY: KindSpec(
            "fl_core_register_security_providers", SecurityProvider, SecurityHookSpecs
        ),
    }
)
"""Every plugin kind; the order is the order in which the registry is built."""

HOOKSPECS: tuple[type, ...] = (*(spec.hookspecs for spec in KINDS.values()), EventHookSpecs)
"""Every hookspec class a plugin manager adds: the kinds' and the notification hooks."""
