"""The parts every container builds with: components from the registry, checked and wired.

Kept apart from the containers so that a light process (the training
process) can build its pipe without importing the roles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fl_core.plugins import Registry
from fl_core.spec import ComponentKind
from fl_core.spec.pipe import Pipe, TransportMaker
from fl_core.spec.security import SecurityProvider
from fl_core.spec.transport import Transport
from fl_core.spec.workflow import Workflow

log = logging.getLogger(__name__)


def build_component(
    registry: Registry, kind: str, name: str, options: Mapping[str, Any] | None
) -> Any:
    """Create the component `name` of `kind`, checked against the kind's interface."""
    return registry.create(kind, name, options or {})


def build_transport(
    registry: Registry,
    name: str,
    options: Mapping[str, Any] | None,
    security: SecurityProvider,
    identity: str,
) -> Transport:
    """The transport `name`, presenting the security provider's credentials for `identity`.

    A provider without credentials (`none`) leaves the transport plaintext,
    and the transport is not handed a `credentials` option at all, so a
    transport that knows no TLS still builds.
    """
    settings = dict(options or {})
    credentials = security.credentials(identity)
    if credentials is not None:
        settings["credentials"] = credentials
    transport = build_component(registry, ComponentKind.TRANSPORT, name, settings)
    assert isinstance(transport, Transport)
    return transport


def transport_maker(registry: Registry) -> TransportMaker:
    """Makes transports by name from `registry`: what pipes are handed (`Pipe.use_transports`)."""

    def make(name: str, options: Mapping[str, Any]) -> Transport:
        transport = build_component(registry, ComponentKind.TRANSPORT, name, options)
        assert isinstance(transport, Transport)
        return transport

    return make


def build_pipe(
    registry: Registry, name: str, options: Mapping[str, Any] | None, transports: TransportMaker
) -> Pipe:
    """A fresh pipe `name`, already handed the maker of transports."""
    pipe = build_component(registry, ComponentKind.PIPE, name, options)
    assert isinstance(pipe, Pipe)
    pipe.use_transports(transports)
    return pipe


def build_workflow(
    registry: Registry,
    name: str,
    options: Mapping[str, Any] | None,
    min_clients: int,
    rounds: int,
) -> Workflow:
    """Create the job's workflow from its name, options and top-level arguments."""
    workflow = build_component(
        registry,
        ComponentKind.WORKFLOW,
        name,
        {**(options or {}), "min_clients": min_clients, "rounds": rounds},
    )
    assert isinstance(workflow, Workflow)
    return workflow


def registry_of(pm: Any) -> Registry:
    """The registry of a plugin manager's components."""
    registry = pm.registry()
    assert isinstance(registry, Registry)
    return registry
