"""Registers the `sag` workflow. Import-light: numpy and the workflow load on use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fl_core.spec import Register, hookimpl

if TYPE_CHECKING:
    from .workflow import ScatterAndGather


def make_sag(*, min_clients: int, rounds: int, **options: Any) -> ScatterAndGather:
    """Build the scatter-and-gather (FedAvg) workflow; see `workflow.make_sag`."""
    from .workflow import make_sag as build

    return build(min_clients=min_clients, rounds=rounds, **options)


@hookimpl
def fl_core_register_workflows(register: Register) -> None:
    """Register `sag`: scatter the global model, gather and average the results."""
    register("sag", make_sag)
