"""Pipes: carry Client API messages between a client job and its training process."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from fl_core.spec import Register, hookspec


class PipeSide(enum.StrEnum):
    """Which end of a pipe: the client job is ACTIVE, the trainer PASSIVE."""

    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass(slots=True)
class PipeMessage:
    """One message through a pipe: a topic, string headers and a body."""

    topic: str
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None


class Pipe(ABC):
    """A two-ended message channel between two processes."""

    @abstractmethod
    def open(self, name: str, side: PipeSide) -> None:
        """Open the end `side` of the pipe called `name`."""

    @abstractmethod
    def send(self, message: PipeMessage, timeout: float) -> bool:
        """Deliver `message`; False if the peer did not take it within `timeout`."""

    @abstractmethod
    def receive(self, timeout: float) -> PipeMessage | None:
        """The next message, or None if none came within `timeout`."""

    @abstractmethod
    def close(self) -> None:
        """Close this end; idempotent."""


class PipeHookSpecs:
    """Hooks for pipe plugins."""

    @hookspec(historic=True)
    def fl_core_register_pipes(self, register: Register) -> None:
        """Register pipe factories; `factory(**options)` returns a `Pipe`."""
